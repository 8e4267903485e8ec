"""Energy and money: Decimal, half-up to cents, persisted as strings."""

from __future__ import annotations

from decimal import Decimal

import pytest

from broker.core.sessions import Session, energy_kwh
from common.money import session_cost, to_decimal


def test_energy_formula_and_never_negative() -> None:
    assert energy_kwh(20, 80, 60) == Decimal("36")
    assert energy_kwh(20.5, 21.0, 60) == Decimal("0.3")
    assert energy_kwh(80, 20, 60) == 0


@pytest.mark.parametrize(
    ("energy", "price", "cost"),
    [
        ("1.005", "1", "1.01"),  # half-up, where binary float rounding would give 1.00
        ("2.675", "1", "2.68"),
        ("0.125", "0.2", "0.03"),  # 0.025 -> 0.03
        ("36", "2.0", "72.00"),
        ("21.75", "1.99", "43.28"),
    ],
)
def test_cost_rounds_half_up_to_cents(energy: str, price: str, cost: str) -> None:
    assert session_cost(Decimal(energy), Decimal(price)) == Decimal(cost)


def test_to_decimal_uses_the_shortest_repr() -> None:
    assert to_decimal(0.1) == Decimal("0.1")


def test_record_round_trip_keeps_decimals() -> None:
    s = Session("s1", "V", "P", 10.0, 20.0, 80.0, 60.0, "Pix", Decimal("1.99"), "r1", "b")
    assert Session.from_record(s.record()).record() == s.record()
    s.ended_at, s.nivel_final, s.energy = 99.0, 80.0, Decimal("36")
    s.cost, s.reason = session_cost(s.energy, s.price_kwh), "stopped"
    back = Session.from_record(s.record())
    assert back.cost == Decimal("71.64") and back.record() == s.record()
    line = back.statement_line()
    assert line.cost == 71.64 and line.energia_kwh == 36.0
