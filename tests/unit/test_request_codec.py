"""Vehicle request decoding: one JSON object, its validation and the field it names."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import UNSET

from common.codec import encode_request
from common.errors import BadJson, InvalidRequest, TooLarge, UnknownType
from common.messages import (
    MAX_REQUEST_BYTES,
    REQUEST_TYPES,
    Chegada,
    Ping,
    Reserva,
    VehicleRequest,
)
from common.request_codec import (
    DecodedRequest,
    DecodeFailure,
    StreamDecoder,
    decode_one,
    decode_request,
)
from tests.support.codec_samples import EXPECTED, ORIGINAL, ORIGINAL_BYTES, failure, summary

# --- one request -------------------------------------------------------------------------

# a shared, loaded machine must not turn slow data generation into failures
SLOW_OK = [HealthCheck.too_slow]


@pytest.mark.parametrize(("raw", "expected"), list(zip(ORIGINAL_BYTES, EXPECTED, strict=True)))
def test_original_client_requests_decode(raw: bytes, expected: VehicleRequest) -> None:
    assert decode_request(raw) == expected


def test_envelope_id_is_echoed_and_unknown_fields_ignored() -> None:
    raw = b'{"x":1,"type":"ping","id":"abc","data":{"novo":{"a":[1,2]}}}'
    assert decode_request(raw) == VehicleRequest("ping", Ping(), "abc")
    assert decode_request(b'{"type":"ping"}') == VehicleRequest("ping", Ping(), UNSET)
    assert decode_request(b'{"id":null,"type":"ping"}').id is None
    assert decode_request(b'{"type":"custos","id":1.5}').id == 1.5


def test_defaults_apply() -> None:
    request = decode_request(b'{"type":"reserva","data":{"id_ponto_recarga":"CP9"}}')
    assert request.data == Reserva(id_ponto_recarga="CP9", tempo_estimado=0.0)
    chegada = decode_request(
        b'{"type":"chegada","data":{"id_ponto_recarga":"CP9","nivel_bateria":10,'
        b'"nivel_carregar":90,"metodo_pagamento":"Pix"}}'
    )
    assert isinstance(chegada.data, Chegada)
    assert chegada.data.capacidade_kwh == 60.0
    assert chegada.data.id_veiculo is None


def test_unknown_payment_choice_of_original_client_is_invalid() -> None:
    raw = ORIGINAL[3].replace("Débito em conta", "Método de pagamento inválido").encode()
    with pytest.raises(InvalidRequest) as info:
        decode_request(raw)
    assert info.value.field == "metodo_pagamento"
    assert info.value.code == "invalid"
    assert "Pix" in info.value.message and "Método de pagamento inválido" in info.value.message


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b"[1,2]", "request", "JSON object"),
        (b"42", "request", "JSON object"),
        (b'"ping"', "request", "JSON object"),
        (b"null", "request", "JSON object"),
        (b'{"data":{}}', "type", "missing"),
        (b'{"type":7}', "type", "string"),
        (b'{"type":null}', "type", "string"),
        (b'{"type":"ping","data":[]}', "data", "JSON object"),
        (b'{"type":"ping","data":"x"}', "data", "JSON object"),
        (b'{"type":"ping","id":[1]}', "id", "scalar"),
        (b'{"type":"ping","id":{"a":1}}', "id", "scalar"),
        (b'{"type":"reserva","data":{}}', "id_ponto_recarga", "missing"),
        (b'{"type":"reserva","data":{"id_ponto_recarga":5}}', "id_ponto_recarga", "str"),
        (b'{"type":"reserva","data":{"id_ponto_recarga":""}}', "id_ponto_recarga", "length"),
        (
            b'{"type":"reserva","data":{"id_ponto_recarga":"P","tempo_estimado":241}}',
            "tempo_estimado",
            "240",
        ),
        (
            b'{"type":"reserva","data":{"id_ponto_recarga":"P","id_veiculo":"a b"}}',
            "id_veiculo",
            "regex",
        ),
        (
            b'{"type":"reserva","data":{"id_ponto_recarga":"P","id_veiculo":"' + b"a" * 65 + b'"}}',
            "id_veiculo",
            "regex",
        ),
        (
            b'{"type":"bateria","data":{"nivel_bateria":101,'
            b'"localizacao":{"latitude":1,"longitude":2}}}',
            "nivel_bateria",
            "100",
        ),
        (
            b'{"type":"bateria","data":{"nivel_bateria":true,'
            b'"localizacao":{"latitude":1,"longitude":2}}}',
            "nivel_bateria",
            "bool",
        ),
        (
            b'{"type":"bateria","data":{"nivel_bateria":1e400,'
            b'"localizacao":{"latitude":1,"longitude":2}}}',
            "nivel_bateria",
            "range",
        ),
        (
            b'{"type":"bateria","data":{"nivel_bateria":50,'
            b'"localizacao":{"latitude":91,"longitude":2}}}',
            "localizacao.latitude",
            "90",
        ),
        (
            b'{"type":"bateria","data":{"nivel_bateria":50,"localizacao":{"longitude":2}}}',
            "localizacao.latitude",
            "missing",
        ),
        (
            b'{"type":"bateria","data":{"nivel_bateria":50,"localizacao":[1,2]}}',
            "localizacao",
            "object",
        ),
        (
            b'{"type":"consulta","data":{"localizacao":{"latitude":1,"longitude":2},"limite":101}}',
            "limite",
            "100",
        ),
        (
            b'{"type":"consulta","data":{"localizacao":{"latitude":1,"longitude":2},'
            b'"distancia_max":-1}}',
            "distancia_max",
            "0",
        ),
        (
            b'{"type":"chegada","data":{"id_ponto_recarga":"P","nivel_bateria":20,'
            b'"nivel_carregar":80,"metodo_pagamento":"Dinheiro"}}',
            "metodo_pagamento",
            "Cartão de crédito",
        ),
        (
            b'{"type":"chegada","data":{"id_ponto_recarga":"P","nivel_bateria":50,'
            b'"nivel_carregar":50,"metodo_pagamento":"Pix"}}',
            "nivel_carregar",
            "greater",
        ),
        (
            b'{"type":"chegada","data":{"id_ponto_recarga":"P","nivel_bateria":50,'
            b'"nivel_carregar":101,"metodo_pagamento":"Pix"}}',
            "nivel_carregar",
            "100",
        ),
        (
            b'{"type":"chegada","data":{"id_ponto_recarga":"P","nivel_bateria":50,'
            b'"nivel_carregar":90,"metodo_pagamento":"Pix","capacidade_kwh":0}}',
            "capacidade_kwh",
            "0",
        ),
        (
            b'{"type":"reserva","data":{"id_ponto_recarga":"P","timestamp":"ontem"}}',
            "timestamp",
            "ISO 8601",
        ),
        (
            b'{"type":"reserva","data":{"id_ponto_recarga":"P","timestamp":""}}',
            "timestamp",
            "ISO 8601",
        ),
        (
            b'{"type":"reserva","data":{"id_ponto_recarga":"P","timestamp":1712484009}}',
            "timestamp",
            "str",
        ),
    ],
)
def test_invalid_requests_name_the_field(raw: bytes, field: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_request(raw)
    assert info.value.field == field
    assert words.lower() in info.value.message.lower()
    assert info.value.to_wire()["field"] == field


def test_invalid_echoes_the_id_when_it_could_be_read() -> None:
    item = failure(b'{"id":9,"type":"reserva","data":{"id_ponto_recarga":""}}')
    assert item.request_id == 9 and not item.close
    item = failure(b'{"type":"reserva","id":"r1","data":{"timestamp":"x","id_ponto_recarga":"P"}}')
    assert item.request_id == "r1" and item.error.field == "timestamp"
    item = failure(b'{"type":7,"id":"r2"}')
    assert item.request_id == "r2" and item.error.field == "type"
    assert failure(b'{"type":"ping","id":[1]}').request_id is UNSET


def test_unknown_type_echoes_the_id() -> None:
    item = failure(b'{"type":"voar","id":"q7","data":{}}')
    assert isinstance(item.error, UnknownType)
    assert item.error.code == "unknown_type"
    assert item.request_id == "q7"
    assert "voar" in item.error.message


def test_timestamps_with_zones_are_accepted() -> None:
    for stamp in ("2025-04-07T10:00:00Z", "2025-04-07T10:00:00+03:00", "2025-04-07T10:00:00.5"):
        raw = encode_request("reserva", {"id_ponto_recarga": "P", "timestamp": stamp})
        assert decode_request(raw).data == Reserva(id_ponto_recarga="P", timestamp=stamp)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"type":', b'{"type":"ping"', b"{'type':'ping'}", b'{"type":"ping",}', b"nope"],
)
def test_bad_json_raises_bad_json(raw: bytes) -> None:
    with pytest.raises(BadJson) as info:
        decode_request(raw)
    assert info.value.code == "bad_json"
    assert info.value.message.startswith("invalid JSON")


def test_bad_utf8_is_bad_json() -> None:
    with pytest.raises(BadJson):
        decode_request(b'{"type":"ping","data":{"id_veiculo":"\xff\xfe"}}')


def test_decode_request_refuses_oversize() -> None:
    raw = encode_request("ping", {"pad": "x" * MAX_REQUEST_BYTES}, newline=False)
    with pytest.raises(TooLarge):
        decode_request(raw)


# --- properties ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "id_veiculo",
        "nivel_bateria",
        "nivel_carregar",
        "localizacao",
        "id_ponto_recarga",
        "tempo_estimado",
        "metodo_pagamento",
        "timestamp",
        "limite",
        "distancia_max",
        "capacidade_kwh",
    ]
)


@given(
    kind=st.sampled_from([*REQUEST_TYPES, "voar", ""]),
    data=st.dictionaries(field_names, json_values, max_size=6) | json_values,
    rid=json_values,
)
@settings(max_examples=400, deadline=None, suppress_health_check=SLOW_OK)
def test_any_json_request_is_answered(kind: str, data: Any, rid: Any) -> None:
    raw = json.dumps({"type": kind, "data": data, "id": rid}, ensure_ascii=False).encode()
    item = decode_one(raw)
    assert isinstance(item, DecodedRequest | DecodeFailure)
    if isinstance(item, DecodeFailure):
        assert isinstance(item.error, InvalidRequest | UnknownType), item
        assert not item.close and item.error.message
        if isinstance(item.error, InvalidRequest):
            assert item.error.field, item
        if not isinstance(rid, dict | list):
            assert item.request_id == rid
    else:
        assert item.request.type == kind and item.request.id == rid
    # the same request inside a stream gives the same answer
    assert summary(StreamDecoder().feed(raw + b"\n")) == summary([item])


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None, suppress_health_check=SLOW_OK)
def test_decode_request_raises_only_protocol_errors(raw: bytes) -> None:
    try:
        request = decode_request(raw)
    except (BadJson, TooLarge, UnknownType, InvalidRequest) as exc:
        assert exc.message
    else:
        assert isinstance(request, VehicleRequest)
