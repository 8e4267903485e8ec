"""A live broker under attack: the state that must survive, and the checks after each phase.

Shared by the hostile suite and ``make soak``. :class:`Ledger` creates, through
the real wire, what the broker has confirmed (reservations of a registered and
of an unregistered vehicle, one billed session) and checks, after a kill -9 and
a restart, that all of it is still there. :func:`ping_ms` and :func:`rss_kib`
are the health figures taken after each phase; :func:`clogged_clients` are the
connections of the flood phases.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.credentials import provision, register, unregister
from tests.support.procs import BrokerPorts
from tests.support.raw_clients import (
    HOST,
    LAT,
    LON,
    FakeStation,
    Vehicle,
    history_request,
    wait_for,
)

POINTS = ("HP01", "HP02", "HP03")
HERE = {"latitude": LAT, "longitude": LON}


def ping_ms(port: int, tries: int = 3) -> float:
    """The best of ``tries`` ping round trips on fresh connections, in milliseconds.

    The best of a few absorbs the scheduler of a shared machine; a broker that is
    stuck answers none of them quickly.
    """
    best = float("inf")
    for i in range(tries):
        with socket.create_connection((HOST, port), timeout=10) as s:
            t0 = time.perf_counter()
            s.sendall(b'{"type":"ping","data":{},"id":%d}\n' % i)
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(4096)
                assert chunk, "closed instead of answering ping"
                buf += chunk
            best = min(best, (time.perf_counter() - t0) * 1000)
            assert json.loads(buf.split(b"\n", 1)[0]) == {"type": "pong", "data": {}, "id": i}
    return best


@contextlib.contextmanager
def clogged_clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` non-blocking connections with a 4 KiB receive buffer, closed at the end."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection((HOST, port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Ledger:
    """What the broker confirmed before the attack, to be found again after kill -9."""

    tokens: dict[str, str] = field(default_factory=dict)
    reservations: dict[str, str] = field(default_factory=dict)  # vehicle -> point
    bills: dict[str, float] = field(default_factory=dict)  # vehicle -> total
    keep: list[Vehicle] = field(default_factory=list)  # owners of unregistered ids

    def create(self, ports: BrokerPorts, station: FakeStation) -> None:
        """Reserve for a registered and an unregistered vehicle; bill one session."""
        wait_for(lambda: self._online(ports), timeout=20, what="hostile points online")
        alice = Vehicle(ports.vehicle, "HALICE")
        self.keep.append(alice)
        reg = alice.ask("registrar")
        assert reg["data"]["code"] == "registered", reg
        self.tokens["HALICE"] = reg["data"]["token"]
        got = alice.ask("reserva", id_ponto_recarga="HP01")
        assert got["data"]["code"] == "reserved", got
        self.reservations["HALICE"] = "HP01"
        go = Vehicle(ports.vehicle)  # the original client: unregistered CAR<port>
        self.keep.append(go)
        go.vehicle_id = f"CAR{go.local_port}"
        got = go.ask("reserva", id_ponto_recarga="HP02")
        assert got["data"]["code"] == "reserved", got
        self.reservations[go.vehicle_id] = "HP02"
        payer = Vehicle(ports.vehicle, "HBOB")
        self.keep.append(payer)
        self.tokens["HBOB"] = payer.ask("registrar")["data"]["token"]
        payer.send(
            {
                "type": "chegada",
                "id": 99,
                "data": {
                    "id_veiculo": "HBOB",
                    "id_ponto_recarga": "HP03",
                    "nivel_bateria": 20,
                    "nivel_carregar": 60,
                    "metodo_pagamento": "Pix",
                },
            }
        )
        start = station.recv_type("start", timeout=10)
        station.ack(start)
        started = payer.push("chegada_response", timeout=10)
        assert started["data"]["code"] == "started", started
        station.send(
            {
                "type": "session_complete",
                "session_id": start["session_id"],
                "vehicle_id": "HBOB",
                "energia_kwh": 12.5,
                "nivel_inicial": 20,
                "nivel_final": 60,
                "started_at": time.time() - 30,
                "ended_at": time.time(),
                "reason": "target_reached",
            }
        )
        station.recv_type("session_ack", timeout=10)
        bill = payer.ask("custos")
        assert bill["type"] == "extrato" and bill["data"]["total"] > 0, bill
        self.bills["HBOB"] = bill["data"]["total"]

    @staticmethod
    def _online(ports: BrokerPorts) -> bool:
        with socket.create_connection((HOST, ports.vehicle), timeout=10) as s:
            s.sendall(json.dumps({"type": "consulta", "data": {"localizacao": HERE}}).encode())
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    return False
                buf += chunk
        reply = json.loads(buf.split(b"\n", 1)[0])
        online = {p["id"] for p in reply["data"] if p["estado"] != "offline"}
        return set(POINTS) <= online

    def release(self) -> None:
        for v in self.keep:
            v.close()
        self.keep.clear()

    def verify(self, ports: BrokerPorts) -> None:
        """Every confirmed reservation and bill is there (after a restart)."""
        for vid, point in self.reservations.items():
            token = self.tokens.get(vid)
            if token is None:
                # an unregistered id's history is read by no new connection: as the operator
                queues = history_request(ports, {"op": "snapshot"})["queues"]
                assert vid in json.dumps(queues.get(point)), (vid, point, queues.get(point))
                continue
            with _as(ports, vid, token) as v:
                status = v.ask("status")
                assert status["type"] == "status_veiculo", status
                reserva = status["data"]["reserva"]
                assert reserva is not None and reserva["id_ponto_recarga"] == point, (vid, status)
        for vid, total in self.bills.items():
            with _as(ports, vid, self.tokens.get(vid)) as v:
                bill = v.ask("custos")
                assert bill["data"]["total"] == total, (vid, bill)


class _as:
    """A connection proving ``vid`` with its token (or owning it, when unregistered)."""

    def __init__(self, ports: BrokerPorts, vid: str, token: str | None) -> None:
        self.v = Vehicle(ports.vehicle, vid)
        if token is not None:
            reply = self.v.ask("autenticar", token=token)
            assert reply["data"]["code"] == "authenticated", reply

    def __enter__(self) -> Vehicle:
        return self.v

    def __exit__(self, *exc: Any) -> None:
        self.v.close()


class LiveBroker:
    """``ev-broker serve`` with its log in a file (a pipe nobody reads could block it)."""

    def __init__(self, ports: BrokerPorts, folder: Path, *options: str) -> None:
        self.ports = ports
        self.folder = folder
        self.options = options
        self.db = str(folder / "broker.db")
        self.log_path = folder / "broker.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        from tests.support.procs import ROOT

        if self.ports.creds is None:
            # auth on, as in production: the test credentials (kept across restarts)
            # are found by port by the raw clients (FakeStation signs and uses CURVE)
            self.ports.creds = provision(self.db, self.folder)
            register(self.ports.creds, *self.ports.all())
        args = [sys.executable, "-m", "broker", "serve", *self.ports.cli_args(),
                "--db", self.db, *self.options]  # fmt: skip
        for cap in ("--max-reservations-per-address", "--max-registrations-per-address"):
            if cap not in args:  # every client is 127.0.0.1 (the swarm registers)
                args += [cap, "1000000"]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )

        def ready() -> bool:
            assert self.popen is not None and self.popen.poll() is None, self.log()[-3000:]
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return b"ev-broker ready" in f.read()

        wait_for(ready, timeout=30, what="broker ready")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9_and_restart(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        self.restarts += 1
        self.start()

    def stop(self) -> int | None:
        unregister(*self.ports.all())
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
