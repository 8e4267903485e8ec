"""The billing ledger (real SQLite files), the billing sink, report formats and reconciliation."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from broker.consumers.billing.ledger import Bill, Ledger, to_money
from broker.consumers.billing.worker import (
    BillingSink,
    reconcile,
    render_reconciliation,
    render_report,
    report_csv,
    report_json,
)
from common.errors import ConfigError, StoreError
from common.messages import BusEvent


def completed(sid: str, vehicle: str = "CAR1", cost: Any = "12.34", **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "session_id": sid,
        "vehicle_id": vehicle,
        "point_id": "CP01",
        "started_at": 1_744_020_000.0,
        "ended_at": 1_744_020_600.5,
        "energy_kwh": "6.17",
        "price_kwh": "2.0",
        "cost": cost,
        "currency": "BRL",
        "payment_method": "Pix",
        "reason": "target_reached",
    }
    data.update(over)
    return data


def event(seq: int, data: dict[str, Any], topic: str = "charging.completed") -> BusEvent:
    return BusEvent(seq, 1_744_020_601.0, topic, data)


def statement(ledger: Ledger) -> dict[str, Any]:
    """The ledger's accounts in the broker's ``accounts`` shape."""
    return {vid: acc.as_json() for vid, acc in ledger.accounts().items()}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "sub" / "billing.db")
    yield led
    led.close()


def test_money_is_decimal_rounded_half_up() -> None:
    assert to_money(12.345) == Decimal("12.35")
    assert to_money("0.125") == Decimal("0.13")
    assert to_money(3) == Decimal("3.00")
    for bad in (None, True, "abc", float("nan"), float("inf")):
        with pytest.raises(ValueError):
            to_money(bad)


def test_bill_from_event_validates_fields() -> None:
    b = Bill.from_event(completed("S1"))
    assert b.cost == Decimal("12.34") and b.started_at == "2025-04-07T10:00:00.000Z"
    assert Bill.from_event(completed("S1", started_at="2025-04-07T10:00:00")).started_at == (
        "2025-04-07T10:00:00.000Z"
    )
    for field, value in [("session_id", ""), ("cost", "x"), ("ended_at", "yesterday"),
                         ("energy_kwh", None), ("vehicle_id", 7)]:  # fmt: skip
        data = completed("S1")
        data[field] = value
        with pytest.raises(ValueError, match=field):
            Bill.from_event(data)


def test_apply_is_idempotent_by_session_and_stores_seq(ledger: Ledger) -> None:
    b1, b2 = Bill.from_event(completed("S1")), Bill.from_event(completed("S2", cost=1.5))
    assert ledger.apply([(3, b1)], 3) == 1
    assert ledger.apply([(3, b1), (7, b2)], 7) == 1
    assert ledger.last_seq == 7
    assert ledger.apply([], 5) == 0
    assert ledger.last_seq == 7  # never backwards
    acc = ledger.accounts()["CAR1"]
    assert acc.total == Decimal("13.84") and [s.session_id for s in acc.sessions] == ["S1", "S2"]
    with sqlite3.connect(ledger.path) as db:
        assert db.execute("SELECT cost_cents FROM sessions ORDER BY session_id").fetchall() == [
            (1234,),
            (150,),
        ]


def test_rows_and_seq_are_one_transaction(ledger: Ledger) -> None:
    """A failing write leaves neither the rows nor the seq behind."""
    good = Bill.from_event(completed("S1"))
    bad = Bill.from_event(completed("S2"))
    object.__setattr__(bad, "vehicle_id", None)  # violates NOT NULL inside the transaction
    with pytest.raises(StoreError):
        ledger.apply([(1, good), (2, bad)], 2)
    assert ledger.last_seq == 0 and ledger.bills() == []


def test_ledger_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with Ledger(path) as led:
        led.apply([(1, Bill.from_event(completed("S1")))], 4)
    with Ledger(path) as led:
        assert led.last_seq == 4 and len(led.bills()) == 1


def test_missing_ledger_and_bad_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Ledger(tmp_path / "none.db", create=False)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Ledger(junk)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError):
        Ledger(blocker / "billing.db")


def test_sink_bills_only_completed_events_and_skips_invalid(ledger: Ledger) -> None:
    sink = BillingSink(ledger)
    sink.on_batch(
        [
            event(1, {"point_id": "CP01"}, "point.status"),
            event(2, completed("S1")),
            event(3, completed("S2", cost=None)),
            event(4, completed("S1")),
        ],
        4,
    )
    assert sink.billed == 1 and sink.invalid == 1
    assert ledger.last_seq == 4
    sink.on_batch([], 9)
    sink.flush()
    assert ledger.last_seq == 9


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 12), max_size=40), st.integers(0, 40))
def test_replaying_any_part_never_doubles(tmp_path_factory: Any, ids: list[int], cut: int) -> None:
    """However events are replayed (restart at any seq, duplicates), each session is billed once."""
    path = tmp_path_factory.mktemp("l") / "b.db"
    events = [event(i + 1, completed(f"S{n}", f"CAR{n % 3}", cost=Decimal(n * 101) / 100))
              for i, n in enumerate(ids)]  # fmt: skip
    with Ledger(path) as led:
        sink = BillingSink(led)
        sink.on_batch(events[cut:], len(events))
        sink.on_batch(events[: cut + 3], len(events))
        sink.on_batch(events, len(events))
        expected = {ev.data["session_id"]: to_money(ev.data["cost"]) for ev in events}
        assert {b.session_id: b.cost for b in led.bills()} == expected
        assert sink.billed == len(expected)
        totals = {vid: acc.total for vid, acc in led.accounts().items()}
        for vid, total in totals.items():
            assert total == sum(c for s, c in expected.items() if f"CAR{int(s[1:]) % 3}" == vid)


def test_report_formats(ledger: Ledger) -> None:
    ledger.apply(
        [
            (1, Bill.from_event(completed("S1", "CAR1"))),
            (
                2,
                Bill.from_event(
                    completed("S2", "CAR2", cost="0.5", payment_method="Débito em conta")
                ),
            ),
        ],
        2,
    )
    accounts = ledger.accounts()
    data = json.loads(report_json(accounts))["accounts"]
    assert data["CAR1"]["total"] == 12.34 and data["CAR2"]["sessoes"][0]["cost"] == 0.5
    assert data["CAR2"]["sessoes"][0]["payment_method"] == "Débito em conta"
    rows = list(csv.DictReader(io.StringIO(report_csv(accounts))))
    assert [(r["vehicle_id"], r["cost"]) for r in rows] == [("CAR1", "12.34"), ("CAR2", "0.50")]
    console = Console(record=True, width=150, file=io.StringIO())
    render_report(ledger.accounts("CAR2"), "table", console)
    text = console.export_text()
    assert "CAR2: 0.50 BRL" in text and "S2" in text and "CAR1" not in text


def test_reconcile_equal_and_every_kind_of_difference(ledger: Ledger) -> None:
    ledger.apply([(1, Bill.from_event(completed("S1"))), (2, Bill.from_event(completed("S2")))], 2)
    broker = statement(ledger)
    assert reconcile(ledger.accounts(), broker).equal
    broker["CAR1"]["sessoes"][0]["cost"] = 99.0
    broker["CAR1"]["sessoes"].pop()
    broker["CAR1"]["total"] = 99.0
    broker["CAR9"] = {"vehicle_id": "CAR9", "moeda": "BRL", "total": 1.0,
                      "sessoes": [{"session_id": "S9", "cost": 1.0}]}  # fmt: skip
    rec = reconcile(ledger.accounts(), broker)
    kinds = sorted((d.vehicle_id, d.session_id or "", d.what) for d in rec.differences)
    assert kinds == [
        ("CAR1", "", "total"),
        ("CAR1", "S1", "cost"),
        ("CAR1", "S2", "only in ledger"),
        ("CAR9", "", "total"),
        ("CAR9", "S9", "only at broker"),
    ]
    out = io.StringIO()
    render_reconciliation(rec, "json", Console(file=out))
    assert json.loads(out.getvalue())["equal"] is False


def test_reconcile_tolerates_rounded_statement_values(ledger: Ledger) -> None:
    ledger.apply(
        [(1, Bill.from_event(completed("S1", energy_kwh="6.1666666", ended_at=5.0004)))], 1
    )
    broker = statement(ledger)
    line = broker["CAR1"]["sessoes"][0]
    line["energia_kwh"] = 6.167
    line["fim"] = "1970-01-01T00:00:05.000Z"
    assert reconcile(ledger.accounts(), broker).equal
    line["energia_kwh"] = 6.2
    assert [d.what for d in reconcile(ledger.accounts(), broker).differences] == ["energy_kwh"]
