"""Sites with real stations: a fleet of four 22 kW points on a 50 kW site.

A UDP relay between the fleet and the broker reads every status datagram, so
the sum of the power the stations report is checked in every one of them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from common.codec import pack, unpack
from tests.support.procs import BrokerPorts, Proc, running
from tests.support.raw_clients import Vehicle, http_get, metric, wait_for

pytestmark = pytest.mark.e2e

LAT, LON = -12.2664, -38.9663
POINTS = [f"S{i:04d}" for i in range(1, 5)]


class Relay:
    """Forwards datagrams to the broker, keeping each station's last reported power."""

    def __init__(self, target: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.target = ("127.0.0.1", target)
        self.drawn: dict[str, float] = {}
        self.worst = 0.0  # the largest sum seen after any datagram
        self.count = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                raw, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            self.sock.sendto(raw, self.target)
            body = raw.split(b" ", 3)[3] if raw.startswith(b"EVS1 ") else raw
            d = json.loads(body)
            with self.lock:
                self.drawn[d["id"]] = float(d.get("potencia_atual_kw") or 0.0)
                self.count += 1
                self.worst = max(self.worst, sum(self.drawn.values()))

    def power(self) -> dict[str, float]:
        with self.lock:
            return dict(self.drawn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


@contextlib.contextmanager
def relay(target: int) -> Iterator[Relay]:
    r = Relay(target)
    try:
        yield r
    finally:
        r.close()


@contextlib.contextmanager
def history(ports: BrokerPorts) -> Iterator[Any]:
    from tests.support.credentials import curve_client_for

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    curve_client_for(sock, ports.history, "operator")
    sock.connect(f"tcp://127.0.0.1:{ports.history}")

    def ask(request: dict[str, Any]) -> dict[str, Any]:
        sock.send(pack(request))
        assert sock.poll(15_000), f"no reply to {request}"
        reply: dict[str, Any] = unpack(sock.recv())
        return reply

    try:
        yield ask
    finally:
        sock.close(linger=0)
        ctx.term()


def fleet_args(ports: BrokerPorts, status_port: int) -> list[str]:
    assert ports.creds is not None
    return [
        "python", "-m", "station", "fleet", "--count", "4", "--prefix", "S",
        "--center", f"{LAT},{LON}", "--radius-km", "0.1", "--power-kw", "22",
        "--interval", "0.5", "--speed", "60",
        "--status-port", str(status_port), "--station-port", str(ports.station),
        *ports.cred_args("station"),
        "--site", "depot", "--site-limit-kw", "50", "--site-history-port", str(ports.history),
        "--site-credentials", str(ports.creds.paths["test-operator"]),
    ]  # fmt: skip


def arrive(car: Vehicle, pid: str) -> None:
    reply = car.ask(
        "chegada",
        id_ponto_recarga=pid,
        nivel_bateria=10,
        nivel_carregar=80,
        metodo_pagamento="Pix",
        capacidade_kwh=1000,
    )
    assert reply["data"]["code"] == "started", reply


def sessions(ask: Any) -> dict[str, dict[str, Any]]:
    (site,) = ask({"op": "sites"})["sites"]
    return {s["point_id"]: s for s in site["sessions"]}


def settled(r: Relay, expected: dict[str, float]) -> bool:
    power = r.power()
    return all(abs(power.get(pid, -1.0) - kw) < 0.01 for pid, kw in expected.items())


def test_four_vehicles_share_a_fifty_kw_site(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    cars = [Vehicle(ports.vehicle, f"ENERGY{i}") for i in range(4)]
    try:
        with (
            relay(ports.status) as r,
            history(ports) as ask,
            running(fleet_args(ports, r.port), ready="fleet ready"),
        ):
            wait_for(lambda: len(r.power()) == 4, timeout=15, what="four stations reporting")
            wait_for(
                lambda: (
                    all(
                        p["estado"] == "disponivel"
                        for p in ask({"op": "snapshot"})["points"]
                        if p["id"] in POINTS
                    )
                    and len(ask({"op": "snapshot"})["points"]) == 4
                ),
                timeout=15,
                what="four points online",
            )
            for car, pid in zip(cars, POINTS, strict=True):
                arrive(car, pid)
            quarter = dict.fromkeys(POINTS, 12.5)
            wait_for(lambda: settled(r, quarter), timeout=10, what="12.5 kW each")
            assert {s["kw"] for s in sessions(ask).values()} == {12.5}
            status = cars[0].ask("status")["data"]["sessao"]
            assert status["potencia_kw"] == 12.5 and status["estado"] == "carregando"
            code, text = http_get(ports.http, "/metrics")
            assert code == 200
            assert metric(text, 'evcharge_site_limit_kw{site="depot"}') == 50.0
            assert metric(text, 'evcharge_site_allocated_kw{site="depot"}') == 50.0
            assert 49.9 <= metric(text, 'evcharge_site_drawn_kw{site="depot"}') <= 50.0
            assert 'evcharge_site_overdraw_total{site="depot"} 0' in text

            # the limit lowered to 10 kW: the first two at 5 kW, the last two paused
            assert ask({"op": "set_site", "name": "depot", "limit_kw": 10, "points": ["S*"]})["ok"]
            low = {POINTS[0]: 5.0, POINTS[1]: 5.0, POINTS[2]: 0.0, POINTS[3]: 0.0}
            wait_for(lambda: settled(r, low), timeout=10, what="two at 5 kW, two paused")
            status = cars[3].ask("status")["data"]["sessao"]
            assert status["estado"] == "aguardando_energia"
            # 15 kW: the first paused resumes first
            assert ask({"op": "set_site", "name": "depot", "limit_kw": 15, "points": ["S*"]})["ok"]
            three = {POINTS[0]: 5.0, POINTS[1]: 5.0, POINTS[2]: 5.0, POINTS[3]: 0.0}
            wait_for(lambda: settled(r, three), timeout=10, what="the first paused resumed")
            assert sessions(ask)[POINTS[3]]["state"] == "paused"
            assert ask({"op": "set_site", "name": "depot", "limit_kw": 50, "points": ["S*"]})["ok"]
            wait_for(lambda: settled(r, quarter), timeout=10, what="12.5 kW each again")

            # one leaves: the others rise within 2 s (no lowering to wait for)
            assert cars[3].ask("parar", id_ponto_recarga=POINTS[3])["data"]["code"] == "stopping"
            left = time.monotonic()
            third = {pid: 16.6 for pid in POINTS[:3]}
            wait_for(lambda: settled(r, third), timeout=10, what="the others rise")
            assert time.monotonic() - left < 2.0 + 0.5  # one datagram interval of slack
            assert r.worst <= 50.0 + 1e-6, r.worst
            assert r.count > 16  # every station reported several times
    finally:
        for car in cars:
            car.close()
