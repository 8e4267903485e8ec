"""OCPI 2.2.1 Tariff structs: decoding, round trip as OCPI JSON, one message per
invalid field."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from common.tariffs import (
    TariffInvalid,
    decode_tariffs,
    encode_tariff,
    flat_tariff,
    tariff_from_builtins,
    tariff_to_builtins,
)

DATA = Path(__file__).parent / "data" / "ocpi"
GOOD = {
    "id": "t1",
    "currency": "BRL",
    "elements": [
        {"price_components": [{"type": "ENERGY", "price": 1.5, "vat": 12, "step_size": 1}]}
    ],
}


def bad(**patch: object) -> dict[str, object]:
    return {**GOOD, **patch}


def component(**patch: object) -> dict[str, object]:
    return bad(
        elements=[{"price_components": [{"type": "ENERGY", "price": 1, "step_size": 1, **patch}]}]
    )


def restricted(**r: object) -> dict[str, object]:
    return bad(
        elements=[
            {"price_components": [{"type": "TIME", "price": 1, "step_size": 1}], "restrictions": r}
        ]
    )


@pytest.mark.parametrize("path", sorted(DATA.glob("*.json")), ids=lambda p: p.stem)
def test_every_ocpi_example_decodes_and_round_trips(path: Path) -> None:
    (t,) = decode_tariffs(path.read_bytes())
    again = json.loads(encode_tariff(t))
    assert again == json.loads(path.read_bytes())  # the OCPI shape, field for field
    assert tariff_from_builtins(tariff_to_builtins(t)) == t


def test_a_list_of_tariffs() -> None:
    ts = decode_tariffs(json.dumps([GOOD, {**GOOD, "id": "t2"}]).encode())
    assert [t.id for t in ts] == ["t1", "t2"]
    assert ts[0].elements[0].price_components[0].price == Decimal("1.5")


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        (component(type="KWH"), "price_components[0].type"),
        (component(price=-0.01), "price"),
        (bad(currency="REAL"), "currency"),
        (bad(currency="br"), "currency"),
        (restricted(day_of_week=["FUNDAY"]), "day_of_week"),
        (restricted(start_date="2025-02-01", end_date="2025-01-01"), "end_date"),
        (
            bad(start_date_time="2025-02-01T00:00:00Z", end_date_time="2025-01-01T00:00:00Z"),
            "end_date_time",
        ),
        (restricted(start_time="25:00"), "start_time"),
        (restricted(min_kwh=10, max_kwh=5), "max_kwh"),
        # GOOD is a plain JSON mapping (object values): its elements list is indexed here
        (bad(elements=[GOOD["elements"][0]] * 101), "elements"),  # type: ignore[index]
        (bad(elements=[]), "elements"),
        (bad(id=""), "id"),
        (bad(colour="red"), "colour"),
        (bad(elements=[{"price_components": [{"type": "TIME", "price": 1}]}]), "step_size"),
        ({k: v for k, v in GOOD.items() if k != "currency"}, "currency"),
    ],
)
def test_invalid_tariffs_one_message_naming_the_field(doc: dict[str, object], names: str) -> None:
    with pytest.raises(TariffInvalid) as info:
        decode_tariffs(json.dumps(doc).encode())
    assert names in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"42", b'"x"'])
def test_not_a_tariff_at_all(raw: bytes) -> None:
    with pytest.raises(TariffInvalid):
        decode_tariffs(raw)


def test_duplicate_ids_in_one_file() -> None:
    with pytest.raises(TariffInvalid, match="duplicate"):
        decode_tariffs(json.dumps([GOOD, GOOD]).encode())


def test_flat_tariff_is_one_energy_component() -> None:
    t = flat_tariff(Decimal("1.99"), "BRL")
    assert json.loads(encode_tariff(t))["elements"] == [
        {"price_components": [{"type": "ENERGY", "price": 1.99, "step_size": 0}]}
    ]
