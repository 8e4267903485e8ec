"""The ledger's contract on both stores: a real SQLite file and a real PostgreSQL server.

The same checks run on each: idempotent writes keyed by session and by
(region, seq), rows and seq in one transaction, migrations from version 1,
reports and reconciliation from either store.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.consumers.billing.backends import open_ledger
from broker.consumers.billing.ledger import (
    SCHEMA_VERSION,
    Bill,
    Entry,
    Ledger,
    LedgerBase,
)
from broker.consumers.billing.worker import merge_accounts, reconcile
from common.errors import StoreError
from tests.support.servers import Postgres, need_servers, postgres
from tests.unit.test_ledger import completed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    need_servers()
    with postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "billing.db")
    server: Postgres = request.getfixturevalue("pg")
    return server.create_database(f"t{uuid.uuid4().hex[:10]}")


def entry(region: str, seq: int, sid: str, vehicle: str = "CAR1", cost: str = "1.00") -> Entry:
    return Entry(region, seq, Bill.from_event(completed(sid, vehicle, cost)), 1_744_020_601.0)


def test_writes_are_idempotent_by_event_and_by_session(target: str) -> None:
    with open_ledger(target) as led:
        assert led.write([entry("fsa", 1, "S1"), entry("ssa", 1, "S2")]) == 2
        # a redelivered batch, the same event under another session id, the same
        # session under another event: nothing is billed twice
        assert led.write([entry("fsa", 1, "S1"), entry("fsa", 1, "S9"), entry("ssa", 7, "S2")]) == 0
        assert led.write([entry("fsa", 2, "S3", cost="2.50")], applied_seq=None) == 1
        assert sorted(b.session_id for b in led.bills()) == ["S1", "S2", "S3"]
        assert led.accounts()["CAR1"].total == pytest.approx(4.5)
        assert len(led.delays()) == 3
        assert led.apply([], 5) == 0 and led.last_seq == 5
        assert led.apply([], 3) == 0 and led.last_seq == 5  # never backwards


def test_a_failed_batch_writes_nothing(target: str) -> None:
    with open_ledger(target) as led:
        bad = Entry("fsa", 2, Bill.from_event(completed("S2")))
        # (ignored below) a bill with a missing vehicle id on purpose (the ledger must refuse it)
        bad = Entry(bad.region, bad.seq, Bill(**{**bad.bill.__dict__, "vehicle_id": None}))  # type: ignore[arg-type]
        with pytest.raises(StoreError):
            led.write([entry("fsa", 1, "S1"), bad], applied_seq=9)
        assert led.bills() == [] and led.last_seq == 0


def test_reopen_keeps_rows_and_schema_version(target: str) -> None:
    with open_ledger(target) as led:
        led.write([entry("fsa", 1, "S1")], applied_seq=1)
    with open_ledger(target, create=False) as led:
        assert [b.session_id for b in led.bills()] == ["S1"] and led.last_seq == 1


def test_reconcile_merges_one_broker_per_region(target: str) -> None:
    with open_ledger(target) as led:
        led.write([entry("fsa", 1, "S1", cost="1.10"), entry("ssa", 1, "S2", cost="2.20")])
        mine = led.accounts()
    fsa = {"CAR1": {**mine["CAR1"].as_json(), "total": 1.10}}
    fsa["CAR1"]["sessoes"] = [s for s in fsa["CAR1"]["sessoes"] if s["session_id"] == "S1"]
    ssa = {"CAR1": {**mine["CAR1"].as_json(), "total": 2.20}}
    ssa["CAR1"]["sessoes"] = [s for s in ssa["CAR1"]["sessoes"] if s["session_id"] == "S2"]
    assert reconcile(mine, merge_accounts([fsa, ssa])).equal
    assert not reconcile(mine, merge_accounts([fsa])).equal


def test_sqlite_ledger_of_version_1_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        from broker.consumers.billing.ledger import MIGRATIONS

        for stmt in MIGRATIONS[1]["sqlite"]:
            db.execute(stmt)
        db.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('last_seq', '4')")
        db.execute(
            "INSERT INTO sessions VALUES ('S1', 3, 'CAR1', 'CP01', '2025-04-07T10:00:00.000Z',"
            " '2025-04-07T10:10:00.500Z', '6.17', '2.0', 1234, 'BRL', 'Pix', 'target_reached')"
        )
    with Ledger(path) as led:
        assert led.last_seq == 4 and [b.session_id for b in led.bills()] == ["S1"]
        assert led.write([entry("", 3, "S7")]) == 0  # (region "", seq 3) is S1's event
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert int(version[0]) == SCHEMA_VERSION


def test_unreachable_postgresql_is_a_clear_store_error() -> None:
    from broker.consumers.billing.ledger_pg import PgLedger

    with pytest.raises(StoreError, match="cannot reach ledger"):
        PgLedger("postgresql://nobody@127.0.0.1:1/none", connect_timeout_s=1.0)


def test_ledger_base_is_shared(target: str) -> None:
    with open_ledger(target) as led:
        assert isinstance(led, LedgerBase)
