"""The billing worker as a real process against a real broker, with fake stations and vehicles.

A fake station is a raw ZeroMQ DEALER (routing id = point id) that says hello,
heartbeats, acks commands and completes each session at once; a vehicle is a
raw TCP JSON socket (``tests.support.raw_clients.Vehicle``). The worker is killed
with SIGKILL mid-run and the broker is restarted under it: in the end the ledger
equals the broker's accounts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from broker.consumers.billing.ledger import Ledger
from common.codec import pack, unpack
from tests.support.credentials import curve_client_for
from tests.support.procs import BrokerPorts, Proc, start, start_broker
from tests.support.raw_clients import Vehicle, wait_for

pytestmark = pytest.mark.e2e

BROKER_OPTS = ("--offline-after", "1.5", "--offline-grace", "3")


class FakeStation:
    """A station on a thread: hello, heartbeats, acks; completes each session at once."""

    def __init__(self, ports: BrokerPorts, point_id: str, lat: float = -12.27) -> None:
        self.ports, self.point_id, self.lat = ports, point_id, lat
        self.completed: list[str] = []
        self.acked: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _socket(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, self.point_id.encode())
        curve_client_for(sock, self.ports.station, "station")
        sock.connect(f"tcp://127.0.0.1:{self.ports.station}")
        hello = {"type": "hello", "id": self.point_id, "latitude": self.lat, "longitude": -38.97,
                 "potencia_kw": 50.0, "preco_kwh": 2.0, "boot_id": uuid.uuid4().hex,
                 "interval_s": 0.5}  # fmt: skip
        sock.send(pack(hello))
        return sock

    def _run(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = self._socket(ctx)
        pending: dict[str, dict[str, Any]] = {}
        heard = beat = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now - heard > 1.5:  # the broker may have restarted: a new socket, hello
                    sock.close(linger=0)
                    sock = self._socket(ctx)
                    heard = now
                if now - beat > 0.3:
                    sock.send(pack({"type": "heartbeat"}))
                    for msg in pending.values():  # resent until session_ack
                        sock.send(pack(msg))
                    beat = now
                if not sock.poll(50):
                    continue
                msg = unpack(sock.recv())
                heard = time.monotonic()
                kind = msg.get("type")
                if kind in ("hold", "release", "start", "stop"):
                    sock.send(pack({"type": "ack", "cmd_id": msg["cmd_id"], "ok": True}))
                if kind == "start":
                    t = time.time()
                    lo, hi = float(msg["nivel_bateria"]), float(msg["nivel_carregar"])
                    pending[msg["session_id"]] = {
                        "type": "session_complete", "session_id": msg["session_id"],
                        "vehicle_id": msg["vehicle_id"],
                        "energia_kwh": (hi - lo) / 100 * float(msg["capacidade_kwh"]),
                        "nivel_inicial": lo, "nivel_final": hi, "started_at": t,
                        "ended_at": t + 1.0, "reason": "target_reached",
                    }  # fmt: skip
                    self.completed.append(msg["session_id"])
                    sock.send(pack(pending[msg["session_id"]]))
                elif kind == "session_ack":
                    pending.pop(msg["session_id"], None)
                    self.acked.add(msg["session_id"])
        finally:
            sock.close(linger=0)
            ctx.term()


def vehicle_request(port: int, req_type: str, data: dict[str, Any], want: str) -> dict[str, Any]:
    """Send one request on a fresh TCP connection; return the first reply of type ``want``."""
    with contextlib.closing(Vehicle(port)) as v:
        v.send({"type": req_type, "data": data})
        return dict(v.recv_type(want, timeout=10)["data"])


def charge(ports: BrokerPorts, station: FakeStation, vehicle: str, battery: float = 20) -> str:
    """A walk-in charging session, completed and acknowledged; returns its session id."""
    deadline = time.monotonic() + 15
    while True:
        reply = vehicle_request(
            ports.vehicle,
            "chegada",
            {
                "id_veiculo": vehicle,
                "id_ponto_recarga": station.point_id,
                "nivel_bateria": battery,
                "nivel_carregar": 80,
                "metodo_pagamento": "Pix",
                "capacidade_kwh": 50,
            },
            "chegada_response",
        )
        if reply.get("code") == "started":
            break
        assert time.monotonic() < deadline, f"arrival refused: {reply}"
        time.sleep(0.2)  # point still offline / busy (e.g. just after a broker restart)
    sid = str(reply["session_id"])
    wait_for(lambda: sid in station.acked, timeout=15, what=f"session_ack for {sid}")
    return sid


def ledger_sessions(db: Path) -> set[str]:
    if not db.exists():
        return set()
    with contextlib.closing(sqlite3.connect(db)) as con:
        try:
            return {r[0] for r in con.execute("SELECT session_id FROM sessions")}
        except sqlite3.OperationalError:
            return set()


def cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args], capture_output=True, text=True, timeout=timeout
    )


def bus_args(ports: BrokerPorts) -> list[str]:
    return ["--broker", "127.0.0.1", "--events-port", str(ports.events),
            "--history-port", str(ports.history), *ports.cred_args()]  # fmt: skip


def start_billing(ports: BrokerPorts, db: Path) -> Proc:
    proc = start(["python", "-m", "broker", "billing", *bus_args(ports), "--db", str(db)])
    try:
        proc.read_until("billing ready", timeout=15)
    except BaseException:
        proc.stop()
        raise
    return proc


def reconcile_until_equal(ports: BrokerPorts, db: Path, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        res = cli(
            *("billing", "reconcile", "--broker", "127.0.0.1", "--history-port"),
            *(str(ports.history), "--db", str(db), "--format", "json", *ports.cred_args()),
        )
        if res.returncode == 0:
            return dict(json.loads(res.stdout))
        assert res.returncode == 1, res.stderr
        assert time.monotonic() < deadline, f"ledger never equal to broker accounts: {res.stdout}"
        time.sleep(0.3)


@pytest.fixture
def stations(broker: tuple[Proc, BrokerPorts]) -> Iterator[list[FakeStation]]:
    _, ports = broker
    sts = [FakeStation(ports, "CP01", -12.27), FakeStation(ports, "CP02", -12.28)]
    try:
        yield sts
    finally:
        for s in sts:
            s.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes started by a test, all stopped at the end."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            p.stop()


def test_billing_survives_kill_9_and_catches_up(
    broker: tuple[Proc, BrokerPorts], stations: list[FakeStation], procs: list[Proc], tmp_path: Path
) -> None:
    _, ports = broker
    db = tmp_path / "billing.db"
    worker = start_billing(ports, db)
    procs.append(worker)
    first = [charge(ports, stations[i % 2], f"CAR{i}") for i in range(4)]
    wait_for(
        lambda: ledger_sessions(db) == set(first), timeout=15, what="first bills in the ledger"
    )
    worker.kill9()
    later = [charge(ports, stations[i % 2], f"CAR{i % 3}", battery=30) for i in range(4)]
    assert ledger_sessions(db) == set(first)
    worker = start_billing(ports, db)
    procs.append(worker)
    result = reconcile_until_equal(ports, db)
    assert result["equal"] and result["sessions"] == 8
    assert ledger_sessions(db) == set(first + later)
    t0 = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - t0 < 2.5
    report = cli("billing", "report", "--db", str(db), "--format", "json", "--vehicle", "CAR0")
    assert report.returncode == 0, report.stderr
    car0 = json.loads(report.stdout)["accounts"]["CAR0"]
    assert len(car0["sessoes"]) == 3  # CAR0 charged in both rounds
    # 60 % of 50 kWh at 2.0 BRL = 60.00; 50 % = 50.00
    assert car0["total"] == pytest.approx(60.0 + 50.0 + 50.0)


def test_billing_follows_a_broker_restart(
    tmp_path: Path, ports: BrokerPorts, procs: list[Proc]
) -> None:
    broker_db = str(tmp_path / "broker.db")
    db = tmp_path / "billing.db"
    broker = start_broker(ports, broker_db, *BROKER_OPTS)
    procs.append(broker)
    station = FakeStation(ports, "CP07")
    try:
        worker = start_billing(ports, db)
        procs.append(worker)
        before = [charge(ports, station, f"EV{i}") for i in range(2)]
        wait_for(
            lambda: ledger_sessions(db) == set(before), timeout=15, what="bills before the restart"
        )
        broker.kill9()
        broker = start_broker(ports, broker_db, *BROKER_OPTS)
        procs.append(broker)
        after = [charge(ports, station, f"EV{i}") for i in range(3)]
        wait_for(
            lambda: ledger_sessions(db) == set(before + after),
            timeout=15,
            what="bills after restart",
        )
        result = reconcile_until_equal(ports, db)
        assert result["equal"] and result["sessions"] == 5
        assert worker.popen.poll() is None  # the worker rode through the restart
        assert worker.stop() == 0
    finally:
        station.close()


def test_reconcile_reports_differences_with_exit_1(
    broker: tuple[Proc, BrokerPorts], stations: list[FakeStation], tmp_path: Path
) -> None:
    _, ports = broker
    db = tmp_path / "billing.db"
    sid = charge(ports, stations[0], "CARX")
    # a ledger that never saw that session (fresh, at seq 0) differs from the broker
    Ledger(db).close()
    res = cli(
        "billing", "reconcile", "--history-port", str(ports.history), "--db", str(db),
        *ports.cred_args(),
    )  # fmt: skip
    assert res.returncode == 1
    assert sid in res.stdout and "only at broker" in res.stdout


def test_billing_cli_errors(tmp_path: Path) -> None:
    db = tmp_path / "none.db"
    for args, needle in [
        (["billing", "--events-port", "0"], "events-port"),
        (["billing", "report", "--format", "xml", "--db", str(db)], "format"),
        (["billing", "--no-such-option"], "no-such-option"),
    ]:
        res = cli(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert needle in res.stderr
    res = cli("billing", "report", "--db", str(db))
    assert res.returncode == 2 and "no ledger" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "broker", "billing", "report"],
        capture_output=True, text=True, timeout=20,
        env={**os.environ, "EV_BILLING_DB": str(db), "EV_REPORT_FORMAT": "json"},
    )  # fmt: skip
    assert res.returncode == 2 and str(db) in res.stderr  # options read from the environment
    Ledger(db).close()
    res = cli("billing", "reconcile", "--history-port", "1", "--db", str(db), "--timeout", "0.3")
    assert res.returncode == 3 and "no reply" in res.stderr


def test_billing_waits_for_an_absent_broker_and_stops_on_sigterm(
    tmp_path: Path, ports: BrokerPorts
) -> None:
    db = tmp_path / "billing.db"
    worker = start_billing(ports, db)  # nothing listens on these ports
    try:
        time.sleep(2.5)  # history requests time out and are retried meanwhile
        assert worker.popen.poll() is None
        t0 = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.popen.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 2.0
        out = worker.drain()
        assert "billing stopped at seq 0" in out and "Traceback" not in out
        assert ledger_sessions(db) == set()
    finally:
        worker.stop()
