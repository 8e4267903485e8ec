"""Secrets at rest (security contract, second round): the broker's database, its -wal and
-shm, backups and the billing ledger are 0600 in 0700 folders; ``serve`` tightens an
existing database that others could read, and says so in one line.

The attack: ``broker.db`` and its ``-wal``/``-shm`` were created 0644 and hold every
credential's HMAC key; another Unix user read one and signed datagrams as any station.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from broker.consumers.billing.ledger import Ledger
from tests.support.procs import broker_ports, start_broker
from tests.support.raw_clients import Vehicle, wait_for

pytestmark = pytest.mark.e2e


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_its_side_files_are_private(tmp_path: Path) -> None:
    db = tmp_path / "made" / "here" / "broker.db"
    ports = broker_ports()
    broker = start_broker(ports, str(db))
    try:
        car = Vehicle(ports.vehicle, "FILECAR")  # something written: the WAL is in use
        car.ask("ping")
        car.close()
        wait_for(lambda: Path(str(db) + "-wal").exists(), what="the WAL")
        for path in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm")):
            assert mode(path) == 0o600, (path, oct(mode(path)))
        assert mode(db.parent) == 0o700 and mode(db.parent.parent) == 0o700
        backup = tmp_path / "backups" / "copy.db"
        subprocess.run(
            [sys.executable, "-m", "broker", "backup", "--db", str(db), str(backup)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        assert mode(backup) == 0o600 and mode(backup.parent) == 0o700
        with sqlite3.connect(backup) as copy:  # the owner still reads it
            assert copy.execute("SELECT COUNT(*) FROM credential").fetchone()[0] >= 1
    finally:
        broker.stop()


def test_serve_tightens_an_existing_readable_database(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    ports = broker_ports()
    broker = start_broker(ports, str(db))
    broker.stop()
    for path in tmp_path.glob("broker.db*"):
        os.chmod(path, 0o644)  # as an older broker left them
    broker = start_broker(ports, str(db))
    try:
        lines = [line for line in broker.lines if "made them 0600" in line]
        assert len(lines) == 1 and str(db) in lines[0], broker.lines
        assert mode(db) == 0o600
        for side in ("-wal", "-shm"):
            path = Path(str(db) + side)
            assert not path.exists() or mode(path) == 0o600
        car = Vehicle(ports.vehicle, "FILECAR2")  # and the broker works on
        assert car.ask("ping")["type"] == "pong"
        car.close()
    finally:
        broker.stop()


def test_a_new_ledger_is_private(tmp_path: Path) -> None:
    path = tmp_path / "billing" / "ledger.db"
    ledger = Ledger(path)
    try:
        ledger_files = [path, *(Path(str(path) + s) for s in ("-wal", "-shm"))]
        for file in ledger_files:
            assert not file.exists() or mode(file) == 0o600, file
        assert mode(path) == 0o600 and mode(path.parent) == 0o700
    finally:
        ledger.close()
