"""Vehicle stream framing (StreamDecoder), replies and client functions."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.codec import (
    DecodedRequest,
    DecodeFailure,
    ScanState,
    StreamDecoder,
    decode_reply,
    decode_request,
    encode_error,
    encode_reply,
    encode_request,
    scan_value,
)
from common.errors import (
    BadJson,
    EVError,
    Forbidden,
    InvalidRequest,
    ProtocolError,
    TooLarge,
    UnknownType,
)
from common.messages import (
    MAX_REQUEST_BYTES,
    Ping,
    Reserva,
    VehicleRequest,
)
from tests.support.codec_samples import (
    EXPECTED,
    ORIGINAL_BYTES,
    failure,
    feed_chunks,
    requests_of,
    summary,
)

# a shared, loaded machine must not turn slow data generation into failures
SLOW_OK = [HealthCheck.too_slow]

# --- the stream ----------------------------------------------------------------------------


def test_back_to_back_objects_in_one_chunk() -> None:
    decoder = StreamDecoder()
    assert requests_of(decoder.feed(b"".join(ORIGINAL_BYTES))) == EXPECTED
    assert decoder.buffered() == 0


def test_newline_delimited_with_blank_lines_crlf_and_spaces() -> None:
    stream = b"\n\n" + b"\r\n  \t".join(ORIGINAL_BYTES) + b" \r\n\n"
    assert requests_of(StreamDecoder().feed(stream)) == EXPECTED


def test_one_write_per_request_without_newline() -> None:
    decoder = StreamDecoder()
    for raw, expected in zip(ORIGINAL_BYTES, EXPECTED, strict=True):
        assert requests_of(decoder.feed(raw)) == [expected]
        assert decoder.buffered() == 0


def test_byte_by_byte_keeps_partial_objects_buffered() -> None:
    decoder = StreamDecoder()
    stream = ORIGINAL_BYTES[3] + b"\n" + ORIGINAL_BYTES[0]
    got: list[Any] = []
    for i in range(len(stream)):
        got.extend(decoder.feed(stream[i : i + 1]))
        if not got:
            assert decoder.buffered() == i + 1
    assert requests_of(got) == [EXPECTED[3], EXPECTED[0]]
    assert decoder.buffered() == 0


def test_split_inside_multibyte_character() -> None:
    raw = ORIGINAL_BYTES[3]
    cut = raw.index("é".encode()) + 1
    assert requests_of(feed_chunks([raw[:cut], raw[cut:]])) == [EXPECTED[3]]


def test_braces_and_escaped_quotes_inside_strings() -> None:
    point = 'C}{"P\\\\"]['
    raw = encode_request("reserva", {"id_ponto_recarga": point}, request_id='"}', newline=False)
    stream = raw + raw + b"\n" + raw
    expected = VehicleRequest("reserva", Reserva(id_ponto_recarga=point), '"}')
    for cut in range(len(stream) + 1):
        items = feed_chunks([stream[:cut], stream[cut:]])
        assert requests_of(items) == [expected] * 3


def test_deeply_nested_unknown_fields_back_to_back() -> None:
    raw = b'{"type":"ping","x":{"a":{"b":[{"c":"}]"},{"d":{}}]}},"id":1}'
    expected = VehicleRequest("ping", Ping(), 1)
    for cut in range(len(raw) * 2 + 1):
        items = feed_chunks([(raw + raw)[:cut], (raw + raw)[cut:]])
        assert requests_of(items) == [expected, expected]


def test_bad_json_line_then_stream_continues() -> None:
    decoder = StreamDecoder()
    items = decoder.feed(b'{"type": nope}\n' + ORIGINAL_BYTES[2] + b"\n")
    assert isinstance(items[0], DecodeFailure) and isinstance(items[0].error, BadJson)
    assert not items[0].close
    assert [item.request for item in items[1:] if isinstance(item, DecodedRequest)] == [EXPECTED[2]]


def test_bad_json_discards_the_rest_of_its_line_only() -> None:
    stream = b'{"type":"ping"}{bad}{"type":"ping","id":1}\n{"type":"ping","id":2}\n'
    items = StreamDecoder().feed(stream)
    assert summary(items)[0] == VehicleRequest("ping", Ping())
    assert isinstance(items[1], DecodeFailure) and isinstance(items[1].error, BadJson)
    assert summary(items)[2:] == [VehicleRequest("ping", Ping(), 2)]


def test_bad_json_without_newline_discards_the_buffer_then_recovers() -> None:
    decoder = StreamDecoder()
    items = decoder.feed(b'{"type":"ping",,}{"type":"ping","id":1}')
    assert len(items) == 1 and isinstance(items[0], DecodeFailure)
    assert isinstance(items[0].error, BadJson)
    assert decoder.buffered() == 0
    assert requests_of(decoder.feed(ORIGINAL_BYTES[2])) == [EXPECTED[2]]


def test_garbage_without_newline_is_answered_at_once() -> None:
    decoder = StreamDecoder()
    items = decoder.feed(b"hello")
    assert len(items) == 1 and isinstance(items[0], DecodeFailure)
    assert isinstance(items[0].error, BadJson)
    assert decoder.buffered() == 0
    assert requests_of(decoder.feed(b'{"type":"ping"}')) == [VehicleRequest("ping", Ping())]


def test_object_open_at_end_of_line_is_bad_json() -> None:
    items = StreamDecoder().feed(b'{"type":"ping"\n{"type":"ping","id":3}\n')
    assert isinstance(items[0], DecodeFailure) and isinstance(items[0].error, BadJson)
    assert summary(items[1:]) == [VehicleRequest("ping", Ping(), 3)]
    items = StreamDecoder().feed(b'{"type":"ping","data":{"id_veiculo":"ab\n{"type":"ping"}\n')
    assert isinstance(items[0], DecodeFailure) and isinstance(items[0].error, BadJson)
    assert summary(items[1:]) == [VehicleRequest("ping", Ping())]


def test_scalar_lines_are_invalid_and_wait_for_their_line() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b"12") == []
    assert decoder.buffered() == 2
    items = decoder.feed(b"3\n")
    assert len(items) == 1 and isinstance(items[0], DecodeFailure)
    assert isinstance(items[0].error, InvalidRequest) and items[0].error.field == "request"
    items = StreamDecoder().feed(b"[1, 2] {}\n")
    assert [type(item.error) for item in items if isinstance(item, DecodeFailure)] == [
        InvalidRequest,
        InvalidRequest,
    ]


def test_invalid_request_in_stream_keeps_the_following_ones() -> None:
    stream = b'{"type":"voar","id":1}{"type":"ping","id":2}\n{"type":"ping","data":5}'
    items = StreamDecoder().feed(stream)
    assert len(items) == 3
    assert isinstance(items[0], DecodeFailure) and isinstance(items[0].error, UnknownType)
    assert items[0].request_id == 1
    assert summary(items)[1] == VehicleRequest("ping", Ping(), 2)
    assert isinstance(items[2], DecodeFailure) and items[2].error.field == "data"


def test_too_large_complete_line_closes() -> None:
    decoder = StreamDecoder()
    big = encode_request("ping", {"pad": "x" * MAX_REQUEST_BYTES})
    items = decoder.feed(ORIGINAL_BYTES[0] + b"\n" + big + ORIGINAL_BYTES[1] + b"\n")
    assert summary(items)[0] == EXPECTED[0]
    assert len(items) == 2
    last = items[1]
    assert isinstance(last, DecodeFailure) and isinstance(last.error, TooLarge)
    assert last.close and last.error.code == "too_large"
    assert decoder.closed and decoder.buffered() == 0
    assert decoder.feed(ORIGINAL_BYTES[2]) == []


def test_too_large_incomplete_object_closes_before_it_ends() -> None:
    decoder = StreamDecoder(max_request=1000)
    items = decoder.feed(b'{"type":"ping","pad":"')
    for _ in range(9):
        assert decoder.feed(b"y" * 100) == []
    items = decoder.feed(b"y" * 100)
    assert len(items) == 1 and isinstance(items[0], DecodeFailure) and items[0].close
    assert isinstance(items[0].error, TooLarge)
    assert decoder.buffered() == 0


def test_too_large_back_to_back_is_per_request() -> None:
    small = encode_request("ping", {"pad": "z" * 300}, newline=False)
    decoder = StreamDecoder(max_request=len(small))
    assert requests_of(decoder.feed(small * 10)) == [VehicleRequest("ping", Ping())] * 10
    big = encode_request("ping", {"pad": "z" * 301}, newline=False)
    items = decoder.feed(small + big + small)
    assert summary(items)[0] == VehicleRequest("ping", Ping())
    assert isinstance(items[1], DecodeFailure) and items[1].close and len(items) == 2


def test_too_large_garbage_waiting_for_its_line() -> None:
    decoder = StreamDecoder(max_request=100)
    assert decoder.feed(b"1" * 100) == []
    items = decoder.feed(b"2")
    assert len(items) == 1 and isinstance(items[0], DecodeFailure) and items[0].close


def test_whitespace_only_is_not_buffered() -> None:
    decoder = StreamDecoder(max_request=10)
    assert decoder.feed(b" " * 100) == []
    assert decoder.feed(b"\n\r\n\t" * 100) == []
    assert decoder.buffered() == 0 and not decoder.closed


def test_scan_value() -> None:
    assert scan_value(b'{"a":"}"}x', 0) == 9
    assert scan_value(b'xx[1,{"b":[2]}] ', 2) == 15
    assert scan_value(b'{"a":{"b":{"c":"\\"}"}}}', 0) == 23
    state = scan_value(b'{"a":{"b":{"c":"\\', 0)
    assert isinstance(state, ScanState) and state.in_string and state.depth == 3
    assert scan_value(b'{"a":{"b":{"c":"\\"}"}}}', 0, state) == 23
    assert isinstance(scan_value(b'{"a":[1,2', 0), ScanState)


# --- replies and client functions ------------------------------------------------------------


def test_encode_reply_is_compact_utf8_and_newline_terminated() -> None:
    line = encode_reply("custo_final", {"payment_method": "Débito em conta", "cost": 1.5})
    expected = '{"type":"custo_final","data":{"payment_method":"Débito em conta","cost":1.5}}\n'
    assert line == expected.encode()
    assert line.count(b"\n") == 1
    assert encode_reply("pong", {}, 7) == b'{"type":"pong","data":{},"id":7}\n'
    assert encode_reply("pong", {}, None) == b'{"type":"pong","data":{},"id":null}\n'
    assert encode_reply("lista_pontos", []) == b'{"type":"lista_pontos","data":[]}\n'
    assert b"\n" not in encode_reply("x", {"s": "a\nb"})[:-1]


def test_encode_reply_accepts_structs() -> None:
    line = encode_reply("eco", Reserva(id_ponto_recarga="P"), "r")
    assert json.loads(line) == {
        "type": "eco",
        "data": {
            "id_veiculo": None,
            "id_ponto_recarga": "P",
            "tempo_estimado": 0.0,
            "timestamp": None,
        },
        "id": "r",
    }


def test_encode_error() -> None:
    line = encode_error(InvalidRequest("bad level", field="nivel_bateria"), "a")
    assert json.loads(line) == {
        "type": "erro",
        "data": {"code": "invalid", "message": "bad level", "field": "nivel_bateria"},
        "id": "a",
    }
    line = encode_error(Forbidden("not yours"))
    assert json.loads(line) == {
        "type": "erro",
        "data": {"code": "forbidden", "message": "not yours"},
    }


def test_decode_reply_round_trip_and_errors() -> None:
    assert decode_reply(encode_reply("pong", {}, 3)) == {"type": "pong", "data": {}, "id": 3}
    for bad in (b"{", b"[]", b'{"data":{}}', b'{"type":1}', b"\xff"):
        with pytest.raises(BadJson):
            decode_reply(bad)


def test_encode_request_forms() -> None:
    data = {"id_veiculo": "CAR1", "id_ponto_recarga": "CP01"}
    assert encode_request("reserva", data, newline=False) == (
        b'{"type":"reserva","data":{"id_veiculo":"CAR1","id_ponto_recarga":"CP01"}}'
    )
    line = encode_request("reserva", data, "k")
    assert line.endswith(b',"id":"k"}\n')
    assert decode_request(line).id == "k"


def test_errors_from_decoding_are_protocol_errors() -> None:
    for raw in (b"x", b"{}", b'{"type":"x"}', b"[]"):
        item = failure(raw)
        assert isinstance(item.error, ProtocolError) and isinstance(item.error, EVError)
        assert item.error.message


# --- properties ----------------------------------------------------------------------------

point_ids = st.text(min_size=1, max_size=64).filter(lambda s: len(s) <= 64)
ids = st.one_of(st.integers(-(2**53), 2**53), st.text(max_size=8), st.none(), st.booleans())
requests = st.one_of(
    st.builds(lambda: ("ping", {})),
    st.builds(
        lambda p, t: ("reserva", {"id_ponto_recarga": p, "tempo_estimado": t}),
        point_ids,
        st.integers(0, 240),
    ),
    st.builds(
        lambda n, lat, lon: (
            "bateria",
            {"nivel_bateria": n, "localizacao": {"latitude": lat, "longitude": lon}},
        ),
        st.floats(0, 100),
        st.floats(-90, 90),
        st.floats(-180, 180),
    ),
    st.builds(
        lambda a, m: (
            "chegada",
            {
                "id_ponto_recarga": "CP01",
                "nivel_bateria": a,
                "nivel_carregar": a + 1,
                "metodo_pagamento": m,
                "x": {"y": [{"z": "}{"}]},
            },
        ),
        st.integers(0, 99),
        st.sampled_from(["Pix", "Débito em conta", "Cartão de crédito"]),
    ),
)
separators = st.sampled_from([b"", b"\n", b" ", b"\r\n", b"\n\n", b"\t \n "])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=20))
@settings(max_examples=300, deadline=None, suppress_health_check=SLOW_OK)
def test_arbitrary_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    decoder = StreamDecoder(max_request=200)
    items = feed_chunks(split(data, cuts), decoder)
    assert all(isinstance(item, DecodedRequest | DecodeFailure) for item in items)
    for item in items:
        if isinstance(item, DecodeFailure):
            assert isinstance(item.error, BadJson | TooLarge | UnknownType | InvalidRequest)
            assert item.close == isinstance(item.error, TooLarge)
    assert decoder.buffered() <= 201


@given(
    reqs=st.lists(st.tuples(requests, ids, separators), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
)
@settings(max_examples=200, deadline=None, suppress_health_check=SLOW_OK)
def test_valid_streams_decode_the_same_whatever_the_chunking(
    reqs: list[tuple[tuple[str, dict[str, Any]], Any, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(
        encode_request(kind, data, rid, newline=False) + sep for (kind, data), rid, sep in reqs
    )
    expected = [
        decode_request(encode_request(kind, data, rid, newline=False))
        for (kind, data), rid, _ in reqs
    ]
    assert requests_of(StreamDecoder().feed(stream)) == expected
    assert requests_of(feed_chunks(split(stream, cuts))) == expected


@given(
    garbage=st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")),
    reqs=st.lists(st.tuples(requests, separators), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 1500), max_size=12),
)
@settings(max_examples=300, deadline=None, suppress_health_check=SLOW_OK)
def test_garbage_then_newline_recovers(
    garbage: bytes, reqs: list[tuple[tuple[str, dict[str, Any]], bytes]], cuts: list[int]
) -> None:
    valid = b"".join(encode_request(kind, data, newline=False) + sep for (kind, data), sep in reqs)
    expected = [decode_request(encode_request(kind, data)) for (kind, data), _ in reqs]
    whole = StreamDecoder().feed(garbage + b"\n" + valid)
    chunked = feed_chunks(split(garbage + b"\n" + valid, cuts))
    for items in (whole, chunked):
        assert not any(isinstance(item, DecodeFailure) and item.close for item in items)
        tail = items[len(items) - len(expected) :]
        assert requests_of(tail) == expected


def test_pending_object_that_turns_out_bad_discards_the_buffer() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b'{"type" "ping"') == []
    items = decoder.feed(b'}{"type":"ping","id":1}')
    assert len(items) == 1 and isinstance(items[0], DecodeFailure)
    assert isinstance(items[0].error, BadJson) and not items[0].close
    assert decoder.buffered() == 0
    assert summary(decoder.feed(b'{"type":"ping","id":2}')) == [VehicleRequest("ping", Ping(), 2)]


def test_pending_object_completed_with_more_requests_behind_it() -> None:
    decoder = StreamDecoder()
    raw = ORIGINAL_BYTES[0]
    assert decoder.feed(raw[:50]) == []
    assert decoder.feed(raw[50:100]) == []
    assert decoder.buffered() == 100
    items = decoder.feed(raw[100:] + ORIGINAL_BYTES[1] + ORIGINAL_BYTES[2][:10])
    assert requests_of(items) == EXPECTED[:2]
    assert decoder.buffered() == 10
    assert requests_of(decoder.feed(ORIGINAL_BYTES[2][10:] + b"\n")) == [EXPECTED[2]]
    assert decoder.feed(b"") == [] and decoder.buffered() == 0


def test_invalid_request_back_to_back_does_not_lose_the_next() -> None:
    bad = b'{"type":"reserva","id":5,"data":{"id_ponto_recarga":"}{","tempo_estimado":999}}'
    items = StreamDecoder().feed(bad + ORIGINAL_BYTES[2] + bad)
    assert len(items) == 3
    assert isinstance(items[0], DecodeFailure) and items[0].request_id == 5
    assert summary(items)[1] == EXPECTED[2]
    assert isinstance(items[2], DecodeFailure) and items[2].error.field == "tempo_estimado"


def test_long_writes_of_spaced_objects_stay_linear() -> None:
    raw = b'{"type":"reserva","data":{"id_ponto_recarga":"CP01"}}'
    for sep in (b" ", b"\t", b""):
        items = StreamDecoder().feed((raw + sep) * 3000)  # 160 KiB, above the request limit
        assert requests_of(items) == [decode_request(raw)] * 3000


json_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='{}[]"\\ab\n\té', max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet='{}"\\x', max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    tree=json_trees.map(lambda t: {"k": t}) | st.lists(json_trees, max_size=3),
    cut=st.integers(0, 10_000),
)
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_scan_value_finds_the_end_of_any_json_container(tree: Any, cut: int) -> None:
    text = json.dumps(tree, ensure_ascii=False).encode()
    buf = b"  " + text + b'{"next":1}'
    assert scan_value(buf, 2) == 2 + len(text)
    # resumed on a longer buffer, from wherever it stopped
    cut = 2 + cut % len(text)
    state = scan_value(buf[:cut], 2)
    assert isinstance(state, ScanState)
    assert scan_value(buf, 2, state) == 2 + len(text)
