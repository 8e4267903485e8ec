"""Typed replies and pushes (common.replies): the same bytes as before, codes from the errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

import common.errors as errors
from common.codec import encode_reply
from common.messages import PUSH_TYPES, REPLY_TYPES
from common.replies import (
    PUSH_DATA,
    REPLY_DATA,
    ErrorData,
    Refusal,
    RegistrationRefused,
    error_data,
    outcome_code,
    refusal,
)
from tests.support import reply_samples

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schema"


def test_every_reply_and_push_keeps_the_bytes_it_had_as_a_dict() -> None:
    """The scripted run writes exactly the lines the dict-built payloads wrote."""
    expected = reply_samples.EXPECTED.read_bytes().splitlines(keepends=True)
    assert reply_samples.run() == expected


def _sample_messages() -> list[dict[str, Any]]:
    out = []
    for line in reply_samples.EXPECTED.read_bytes().splitlines():
        words = line.split(b" ", 3 if b" push " in line else 1)
        out.append(json.loads(words[-1]))
    return out


@pytest.mark.parametrize("message", _sample_messages(), ids=lambda m: str(m["type"]))
def test_every_sample_fits_its_schema(message: dict[str, Any]) -> None:
    folder = "push" if message["type"] in PUSH_TYPES else "reply"
    schema = json.loads((SCHEMAS / folder / f"{message['type']}.schema.json").read_text())
    jsonschema.validate(message, schema)
    jsonschema.validate(message, json.loads((SCHEMAS / "reply/envelope.schema.json").read_text()))


def test_the_samples_cover_every_push_and_most_replies() -> None:
    kinds = {m["type"] for m in _sample_messages()}
    assert set(PUSH_TYPES) <= kinds
    assert set(REPLY_DATA) - kinds == {"registro", "autenticado"}  # vehicle_auth tests


def test_every_reply_and_push_type_has_its_payloads() -> None:
    assert set(REPLY_DATA) == {*REPLY_TYPES.values(), "erro"}
    assert tuple(PUSH_DATA) == PUSH_TYPES


def test_a_refusal_code_outside_the_error_classes_is_not_a_refusal() -> None:
    good = b'{"status":"error","code":"queue_full","message":"m","vehicle_id":"V","id_ponto_recarga":"P"}'  # noqa: E501
    assert msgspec.json.decode(good, type=Refusal).code == "queue_full"
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(good.replace(b"queue_full", b"queue_ful"), type=Refusal)
    refusal_classes = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.RequestRefused)
    ]
    codes = {cls.code for cls in refusal_classes} - {errors.RequestRefused.code}
    assert codes == set(errors.REFUSAL_CODES)


@pytest.mark.parametrize("code", errors.WIRE_ERROR_CODES)
@pytest.mark.parametrize("field", [None, "nivel_bateria"])
def test_error_data_is_what_to_wire_gives(code: str, field: str | None) -> None:
    err = errors.error_for_code(code, "boom", field)
    assert encode_reply("erro", error_data(err), 1) == encode_reply("erro", err.to_wire(), 1)
    assert outcome_code("erro", error_data(err)) == code == outcome_code("erro", err.to_wire())


def test_outcome_codes_for_metrics() -> None:
    queue_full = refusal(errors.QueueFull("Queue full"), "V", "P")
    assert outcome_code("reserva_response", queue_full) == "queue_full"
    taken = RegistrationRefused(code="already_registered", message="taken")
    assert outcome_code("registro", taken) == "already_registered"
    assert outcome_code("pong", msgspec.Raw(b"{}")) == "ok"
    assert outcome_code("reserva_response", {"status": "error", "code": "x"}) == "x"
    assert isinstance(error_data(errors.InternalError("x")), ErrorData)
