"""docs/schema/ against the msgspec structs (common.schema): no drift, and the schemas mean it.

The JSON Schemas are generated from the structs the broker decodes with; this
test fails when a struct changes and the checked-in schemas were not
regenerated (``python -m common.schema docs/schema``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from common.events import ChargingCompleted, event_fields
from common.schema import drift, main, schemas, write

FOLDER = Path(__file__).resolve().parents[2] / "docs" / "schema"
# The original client's requests, byte for byte (docs/protocol.md)
ORIGINAL = [
    '{"type":"bateria","data":{"id_veiculo":"CAR40312","nivel_bateria":15,"localizacao":{"latitude":-12.266,"longitude":-38.966},"timestamp":"2025-04-07T10:00:00"}}',
    '{"type":"consulta","data":{"id_veiculo":"CAR40312","localizacao":{"latitude":-12.266,"longitude":-38.966},"timestamp":"2025-04-07T10:00:05"}}',
    '{"type":"reserva","data":{"id_veiculo":"CAR40312","id_ponto_recarga":"CP01","tempo_estimado":10,"timestamp":"2025-04-07T10:00:09"}}',
    '{"type":"chegada","data":{"id_veiculo":"CAR40312","id_ponto_recarga":"CP01","nivel_bateria":20,"nivel_carregar":80,"metodo_pagamento":"Débito em conta","timestamp":"2025-04-07T10:20:00"}}',  # noqa: E501
]  # fmt: skip


def load(path: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((FOLDER / path).read_text())
    return schema


def test_checked_in_schemas_match_the_structs() -> None:
    assert drift(FOLDER) == [], "run: python -m common.schema docs/schema"
    assert main(["--check", str(FOLDER)]) == 0


def test_a_changed_struct_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "schema"
    shutil.copytree(FOLDER, copy)
    target = copy / "vehicle" / "reserva.schema.json"
    doc = json.loads(target.read_text())
    doc["$defs"]["Reserva"]["properties"].pop("tempo_estimado")
    target.write_text(json.dumps(doc))
    (copy / "vehicle" / "gone.schema.json").write_text("{}")
    assert drift(copy) == ["vehicle/gone.schema.json", "vehicle/reserva.schema.json"]
    assert main(["--check", str(copy)]) == 1
    write(copy)
    assert drift(copy) == []


@pytest.mark.parametrize("path", sorted(schemas()))
def test_every_schema_is_valid_draft_2020_12(path: str) -> None:
    jsonschema.Draft202012Validator.check_schema(load(path))


@pytest.mark.parametrize("line", ORIGINAL)
def test_the_original_client_requests_validate(line: str) -> None:
    message = json.loads(line)
    jsonschema.validate(message, load(f"vehicle/{message['type']}.schema.json"))


@pytest.mark.parametrize(
    ("path", "message", "field"),
    [
        (
            "vehicle/chegada.schema.json",
            {"type": "chegada", "data": {"id_ponto_recarga": "CP01", "nivel_bateria": 20,
             "nivel_carregar": 80, "metodo_pagamento": "Método de pagamento inválido"}},
            "metodo_pagamento",
        ),
        ("vehicle/reserva.schema.json", {"type": "reserva", "data": {}}, "id_ponto_recarga"),
        (
            "status/datagram.schema.json",
            {"id": "CP01", "latitude": 91, "longitude": 0},
            "latitude",
        ),
        ("station/ack.schema.json", {"type": "ack", "cmd_id": "c1"}, "ok"),
        ("history/since.schema.json", {"op": "since", "seq": -1}, "seq"),
    ],
)  # fmt: skip
def test_bad_messages_do_not_validate(path: str, message: dict[str, Any], field: str) -> None:
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.validate(message, load(path))
    error = info.value
    assert field in [str(p) for p in error.absolute_path] or field in error.message


def test_a_bus_event_built_by_the_broker_validates() -> None:
    data = ChargingCompleted(
        session_id="ses-1", vehicle_id="CAR1", point_id="CP01",
        started_at="2025-04-07T10:00:00.000Z", ended_at="2025-04-07T10:30:00.000Z",
        energy_kwh=12.5, price_kwh=2.0, cost=25.0, payment_method="Pix", reason="target_reached",
    )  # fmt: skip
    payload = {
        "seq": 7,
        "ts": 1744020000.0,
        "topic": "charging.completed",
        "data": event_fields(data),
    }
    jsonschema.validate(payload, load("bus/charging.completed.schema.json"))
    payload["data"] = {"session_id": "ses-1"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, load("bus/charging.completed.schema.json"))


def test_the_protocol_reference_names_every_message_topic_and_code() -> None:
    """docs/protocol.md is complete: a new request, reply, push, topic, station message
    or wire code without its line in the reference fails here."""
    import common.errors as errors
    from common.events import EVENT_TYPES
    from common.messages import PUSH_TYPES, REPLY_TYPES, REQUEST_TYPES
    from common.schema import HISTORY_REQUESTS, STATION_MESSAGES

    text = (FOLDER.parent / "protocol.md").read_text()
    names = [
        *REQUEST_TYPES, *REPLY_TYPES.values(), *PUSH_TYPES, *EVENT_TYPES,
        *(str(cls.__struct_config__.tag) for cls in (*STATION_MESSAGES, *HISTORY_REQUESTS)),
    ]  # fmt: skip
    wire_codes = [
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.ProtocolError | errors.RequestRefused | errors.EventsPruned)
        and cls.code not in ("refused",)
    ]
    missing = [n for n in [*names, *wire_codes] if f"`{n}`" not in text and f'"{n}"' not in text]
    assert missing == []
