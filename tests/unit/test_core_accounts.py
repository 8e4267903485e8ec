"""Accounts: totals in Decimal, each session billed once."""

from __future__ import annotations

from decimal import Decimal

from broker.core.accounts import Accounts
from broker.core.sessions import Session
from common.replies import Statement


def billed(sid: str, vid: str, cost: str) -> Session:
    s = Session(sid, vid, "P", 0.0, 20.0, 80.0, 60.0, "Pix", Decimal("2"), None, None)
    s.ended_at, s.nivel_final, s.energy, s.cost, s.reason = (
        1.0,
        80.0,
        Decimal(1),
        Decimal(cost),
        "x",
    )
    return s


def test_totals_and_idempotence() -> None:
    acc = Accounts()
    assert acc.record(billed("s1", "V", "0.10"))
    assert acc.record(billed("s2", "V", "0.20"))
    assert not acc.record(billed("s1", "V", "0.10"))
    st = acc.statement("V")
    assert st.total == 0.3 and len(st.sessoes) == 2 and st.moeda == "BRL"
    assert acc.statement("W") == Statement(vehicle_id="W", moeda="BRL", total=0.0, sessoes=[])
    assert list(acc.all_statements()) == ["V"]
