"""ev-broker serve over ZeroMQ: station commands, the event bus, history and snapshot.

A real broker process on free ports (fixture ``zbroker``: like ``broker``, with
an offline window longer than any test). A fake station is a raw zmq DEALER
(routing id = point id) plus a raw UDP socket; a vehicle is a raw TCP socket
writing JSON (both from ``tests.support.raw_clients``); bus and history clients
are raw SUB, DEALER and REQ sockets. Everything is closed in ``finally`` blocks.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from tests.support.procs import BrokerPorts, Proc, running, start, start_broker
from tests.support.raw_clients import (
    LAT,
    LON,
    WAIT_S,
    FakeStation,
    Vehicle,
    http_get,
    metric,
    wait_for,
    zmq_ctx,
)

pytestmark = pytest.mark.e2e

#: Bus topics after which a vehicle is no longer in the point's queue.
LEAVE_QUEUE = ("reservation.cancelled", "reservation.expired", "charging.started")


# --- raw clients ---------------------------------------------------------------------------


class Bus:
    """A SUB on every topic, connected before the activity it observes."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], ports: BrokerPorts) -> None:
        self.sub: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"tcp://127.0.0.1:{ports.events}")
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        self.sub.close(linger=0)

    def drain(self, settle: float = 0.3) -> list[dict[str, Any]]:
        """Every event arriving until the bus has been quiet for ``settle`` seconds."""
        while self.sub.poll(int(settle * 1000)):
            frames = self.sub.recv_multipart()
            assert len(frames) == 2, frames
            payload = msgpack.unpackb(frames[1])
            assert set(payload) == {"seq", "ts", "topic", "data"}, payload
            assert frames[0].decode() == payload["topic"]
            self.events.append(payload)
        return self.events

    def wait_for(self, topic: str, timeout: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = len(self.events)
        while True:
            for e in self.events[seen:]:
                if e["topic"] == topic:
                    return e
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {topic} event in {timeout}s")
            if self.sub.poll(int(min(left, 0.1) * 1000)):
                frames = self.sub.recv_multipart()
                self.events.append(msgpack.unpackb(frames[1]))


class History:
    """A DEALER (or REQ) client of the history ROUTER."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], ports: BrokerPorts, kind: int = zmq.DEALER
    ) -> None:
        self.sock: zmq.Socket[bytes] = ctx.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{ports.history}")

    def close(self) -> None:
        self.sock.close(linger=0)

    def ask_raw(self, frame: bytes) -> dict[str, Any]:
        self.sock.send(frame)
        if not self.sock.poll(int(WAIT_S * 1000)):
            raise TimeoutError("no history reply")
        frames = self.sock.recv_multipart()
        assert len(frames) == 1, frames
        reply = msgpack.unpackb(frames[0])
        assert isinstance(reply, dict)
        return reply

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.ask_raw(msgpack.packb(request))

    def all_since(self, seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Page through ``since`` until ``more`` is false."""
        events: list[dict[str, Any]] = []
        while True:
            reply = self.ask({"op": "since", "seq": seq, "limit": limit})
            assert "error" not in reply, reply
            events.extend(reply["events"])
            if reply["events"]:
                seq = reply["events"][-1]["seq"]
            if not reply["more"]:
                return events


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    with zmq_ctx() as ctx:
        yield ctx


@pytest.fixture
def zbroker(tmp_path: Path, ports: BrokerPorts) -> Iterator[tuple[Proc, BrokerPorts]]:
    """A real ``ev-broker serve`` whose offline window outlasts any test here.

    The fake stations do not keep themselves alive in the background, so a slow
    machine must not turn them offline in the middle of a test.
    """
    proc = start_broker(
        ports, str(tmp_path / "broker.db"), "--offline-after", "60", "--offline-grace", "120"
    )
    try:
        yield proc, ports
    finally:
        proc.stop()


@pytest.fixture
def net(zbroker: tuple[Proc, BrokerPorts], zctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Net]:
    n = Net(zctx, zbroker[1])
    try:
        yield n
    finally:
        n.close()


class Net:
    """Factory for the raw clients of one broker; closes them all at the end."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], ports: BrokerPorts) -> None:
        self.ctx = ctx
        self.ports = ports
        self._open: list[FakeStation | Vehicle | Bus | History] = []

    def station(self, point_id: str) -> FakeStation:
        s = FakeStation(
            self.ctx, self.ports.station, point_id, status_port=self.ports.status, price_kwh=1.5
        )
        self._open.append(s)
        return s

    def vehicle(self, vehicle_id: str) -> Vehicle:
        v = Vehicle(self.ports.vehicle, vehicle_id)
        self._open.append(v)
        return v

    def bus(self) -> Bus:
        """A bus subscription demonstrably in place: a probe vehicle connects and goes
        until the bus sees it leave; the probe's events are then dropped."""
        b = Bus(self.ctx, self.ports)
        self._open.append(b)
        deadline = time.monotonic() + WAIT_S
        for k in itertools.count():
            probe = Vehicle(self.ports.vehicle, f"ZPROBE{k}")
            try:
                probe.ask("custos")
            finally:
                probe.close()
            if self._saw_leave(b, f"ZPROBE{k}"):
                break
            assert time.monotonic() < deadline, "the bus subscription never took effect"
        b.events.clear()
        return b

    @staticmethod
    def _saw_leave(bus: Bus, vehicle_id: str) -> bool:
        """Whether ``vehicle.disconnected`` of ``vehicle_id`` arrives within a second."""
        with contextlib.suppress(TimeoutError):
            while bus.wait_for("vehicle.disconnected", timeout=1.0)["data"]["vehicle_id"] != (
                vehicle_id
            ):
                pass
            return True
        return False

    def history(self, kind: int = zmq.DEALER) -> History:
        h = History(self.ctx, self.ports, kind)
        self._open.append(h)
        return h

    def close(self) -> None:
        for c in self._open:
            c.close()


def assert_gap_free(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


# --- tests ---------------------------------------------------------------------------------


def test_hello_gets_welcome_then_heartbeats(net: Net) -> None:
    station = net.station("ZW01")
    welcome = station.greet()
    assert welcome["heartbeat_s"] > 0
    t0 = time.monotonic()
    while station.heartbeats < 3:
        station.recv(timeout=welcome["heartbeat_s"] * 2 + 1)
    # a live station hears from the broker at least every heartbeat_s
    assert time.monotonic() - t0 < 3 * welcome["heartbeat_s"] + 1.5
    assert station.received == [welcome]


def test_malformed_station_frames_do_not_disturb_the_broker(net: Net) -> None:
    station = net.station("ZW02")
    for frames in (
        [b"\xc1garbage"],
        [msgpack.packb({"type": "teleport"})],
        [msgpack.packb({"type": "ack"})],
        [msgpack.packb({"type": "heartbeat"}), b"extra"],
        [msgpack.packb({"type": "hello", "id": "OTHER", "latitude": 0, "longitude": 0})],
    ):
        station.dealer.send_multipart(frames)
    # still served: hello answered, and it is the only answer
    welcome = station.greet()
    assert welcome["type"] == "welcome"
    assert station.received == [welcome]


def test_reserve_arrive_charge_complete_with_resends(net: Net) -> None:
    bus = net.bus()
    station = net.station("ZW03")
    station.greet(price_kwh=1.5)
    station.datagram()
    car = net.vehicle("ZCAR03")

    reply = car.ask("reserva", id_ponto_recarga="ZW03", tempo_estimado=5)
    assert reply["type"] == "reserva_response"
    assert reply["data"]["status"] == "success" and reply["data"]["code"] == "reserved"
    reservation_id = reply["data"]["reservation_id"]
    assert metric(http_get(net.ports.http, "/metrics")[1], "evcharge_vehicles_queued") == 1

    hold = station.expect("hold")
    assert hold["reservation_id"] == reservation_id and hold["vehicle_id"] == "ZCAR03"
    assert isinstance(hold["cmd_id"], str) and hold["until"] > time.time()
    station.ack(hold)
    assert car.push("sua_vez")["data"]["reservation_id"] == reservation_id

    car.send(
        {
            "type": "chegada",
            "id": "arrive",
            "data": {
                "id_veiculo": "ZCAR03",
                "id_ponto_recarga": "ZW03",
                "nivel_bateria": 20,
                "nivel_carregar": 80,
                "metodo_pagamento": "Pix",
                "capacidade_kwh": 60,
            },
        }
    )
    start = station.expect("start")
    assert start["vehicle_id"] == "ZCAR03"
    assert (start["nivel_bateria"], start["nivel_carregar"], start["capacidade_kwh"]) == (
        20,
        80,
        60,
    )
    session_id = start["session_id"]
    station.ack(start)
    arrival = car.recv()
    while arrival.get("id") != "arrive":
        car.pushes.append(arrival)
        arrival = car.recv()
    assert arrival["data"]["code"] == "started", arrival
    assert arrival["data"]["session_id"] == session_id
    station.datagram("carregando", session_id=session_id, vehicle_id="ZCAR03")
    wait_for(
        lambda: (
            metric(http_get(net.ports.http, "/metrics")[1], 'evcharge_points{state="carregando"}')
            == 1
        ),
        what="ZW03 counted as carregando",
    )
    text = http_get(net.ports.http, "/metrics")[1]
    assert metric(text, "evcharge_sessions_active") == 1
    assert metric(text, "evcharge_vehicles_queued") == 0

    now = time.time()
    complete = {
        "type": "session_complete",
        "session_id": session_id,
        "vehicle_id": "ZCAR03",
        "energia_kwh": 36.0,
        "nivel_inicial": 20.0,
        "nivel_final": 80.0,
        "started_at": now - 60,
        "ended_at": now,
        "reason": "target_reached",
    }
    for _ in range(3):  # the station resends until acked, and a lost ack means more resends
        station.send(complete)
        ack = station.expect("session_ack")
        assert ack == {"type": "session_ack", "session_id": session_id}

    bill = car.push("custo_final")["data"]
    assert bill["session_id"] == session_id and bill["vehicle_id"] == "ZCAR03"
    assert float(bill["cost"]) == pytest.approx(54.0)  # 36 kWh at 1.5 BRL
    assert float(bill["energia_kwh"]) == pytest.approx(36.0)
    end = car.push("encerramento")["data"]
    assert end["session_id"] == session_id

    statement = car.ask("custos")["data"]
    assert [s["session_id"] for s in statement["sessoes"]] == [session_id]
    assert float(statement["total"]) == pytest.approx(54.0)

    events = bus.drain()
    completed = [e for e in events if e["topic"] == "charging.completed"]
    assert len(completed) == 1, completed
    data = completed[0]["data"]
    assert data["session_id"] == session_id and data["point_id"] == "ZW03"
    assert float(data["cost"]) == pytest.approx(54.0)
    assert {"reservation.created", "reservation.turn", "charging.started"} <= {
        e["topic"] for e in events
    }
    # billed once: no second bill arrives, even after more time
    with pytest.raises(TimeoutError):
        car.push("custo_final", timeout=0.5)
    assert_gap_free(events)
    # the business figures on /metrics
    text = http_get(net.ports.http, "/metrics")[1]
    assert metric(text, "evcharge_energy_delivered_kwh_total") == pytest.approx(36.0)
    assert metric(text, 'evcharge_revenue_total{currency="BRL"}') == pytest.approx(54.0)
    assert metric(text, 'evcharge_sessions_completed_total{reason="target_reached"}') == 1
    assert metric(text, "evcharge_sessions_active") == 0
    assert "# TYPE evcharge_energy_delivered_kwh_total counter" in text


def test_bus_is_gap_free_and_history_replays_it_exactly(net: Net) -> None:
    bus = net.bus()
    history = net.history()
    stations = [net.station(f"ZH{i:02d}") for i in range(3)]
    for s in stations:
        s.greet()
        s.datagram()
    cars = [net.vehicle(f"ZHCAR{i}") for i in range(4)]
    for i, car in enumerate(cars):
        reply = car.ask("reserva", id_ponto_recarga=f"ZH{i % 3:02d}")
        assert reply["data"]["code"] == "reserved", reply
    cars[3].ask("cancelar", id_ponto_recarga="ZH00")
    for s in stations:
        s.datagram("indisponivel")
    live = bus.drain(settle=0.5)
    assert len(live) >= 10
    assert_gap_free(live)

    replay = history.all_since(0, limit=7)  # small pages exercise the paging
    assert_gap_free(replay)
    assert replay[0]["seq"] == 1
    first_live = live[0]["seq"]
    assert replay[first_live - 1 :] == live
    assert replay[0]["topic"] == "broker.started"

    # the same replay through a REQ socket
    req = net.history(zmq.REQ)
    reply = req.ask({"op": "since", "seq": first_live - 1, "limit": 1000})
    assert reply["events"] == live and reply["more"] is False
    assert reply["last_seq"] == live[-1]["seq"]


def test_snapshot_plus_later_events_reproduce_the_state(net: Net) -> None:
    bus = net.bus()  # Clone pattern: subscribe first ...
    history = net.history()
    a, b = net.station("ZS01"), net.station("ZS02")
    for s in (a, b):
        s.greet()
        s.datagram()
    cars = [net.vehicle(f"ZSCAR{i}") for i in range(4)]
    assert cars[0].ask("reserva", id_ponto_recarga="ZS01")["data"]["code"] == "reserved"
    assert cars[1].ask("reserva", id_ponto_recarga="ZS01")["data"]["code"] == "reserved"
    bus.drain()

    snap = history.ask({"op": "snapshot"})  # ... then take the snapshot ...
    assert set(snap) >= {"seq", "points", "queues", "sessions"}
    assert snap["seq"] == bus.events[-1]["seq"]
    assert {p["id"] for p in snap["points"]} >= {"ZS01", "ZS02"}
    assert clone_state(snap)["ZS01"]["queue"] == ["ZSCAR0", "ZSCAR1"]

    # later changes: new reservations, the turn holder cancels, a station faults
    assert cars[2].ask("reserva", id_ponto_recarga="ZS02")["data"]["code"] == "reserved"
    assert cars[3].ask("reserva", id_ponto_recarga="ZS01")["data"]["code"] == "reserved"
    assert cars[0].ask("cancelar", id_ponto_recarga="ZS01")["data"]["code"] == "cancelled"
    b.datagram("indisponivel")
    bus.drain()

    # ... then apply only the events with seq > snapshot seq
    later = history.all_since(snap["seq"])
    assert later == [e for e in bus.events if e["seq"] > snap["seq"]]
    state = clone_state(snap)
    for e in later:
        apply_event(state, e)
    fresh = history.ask({"op": "snapshot"})
    assert fresh["seq"] == later[-1]["seq"]
    assert state == clone_state(fresh)
    assert state["ZS01"]["queue"] == ["ZSCAR1", "ZSCAR3"]
    assert state["ZS01"]["turn"] == "ZSCAR1"
    assert state["ZS02"]["queue"] == ["ZSCAR2"]
    assert state["ZS02"]["estado"] == "indisponivel"


def clone_state(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per point: estado, availability, queued vehicles in order, who holds the turn."""
    state: dict[str, dict[str, Any]] = {}
    for p in snapshot["points"]:
        if not p["id"].startswith("ZS"):
            continue
        queue = snapshot["queues"].get(p["id"], [])
        turn = [r["vehicle_id"] for r in queue if r.get("turno")]
        state[p["id"]] = {
            "estado": p["estado"],
            "available": p["available"],
            "queue": [r["vehicle_id"] for r in queue],
            "turn": turn[0] if turn else None,
        }
    return state


def apply_event(state: dict[str, dict[str, Any]], event: dict[str, Any]) -> None:
    """What a Clone-pattern client (the monitor) does with one bus event."""
    data = event["data"]
    point = state.get(data.get("point_id", ""))
    if point is None:
        return
    vehicle = data.get("vehicle_id")
    topic = event["topic"]
    if topic == "point.status":
        point["estado"] = data["estado"]
        point["available"] = data["available"]
    elif topic == "reservation.created":
        point["queue"].append(vehicle)
    elif topic == "reservation.turn":
        point["turn"] = vehicle
    elif topic in LEAVE_QUEUE and vehicle in point["queue"]:
        point["queue"].remove(vehicle)
        if point["turn"] == vehicle:
            point["turn"] = None


def test_history_errors_and_accounts(net: Net) -> None:
    history = net.history()
    assert "error" in history.ask({"op": "rewind"})
    assert "error" in history.ask({"op": "since", "seq": -5})
    assert "error" in history.ask_raw(b"\xc1 not msgpack")
    accounts = history.ask({"op": "accounts"})
    assert isinstance(accounts["accounts"], dict)
    reply = history.ask({"op": "since", "seq": 0})
    assert reply["events"][0]["topic"] == "broker.started"


def test_arrival_at_a_disconnected_station_fails_fast(net: Net) -> None:
    station = net.station("ZU01")
    station.greet()
    station.datagram()
    station.dealer.close(linger=0)  # gone from the ROUTER, still online for the broker
    time.sleep(0.2)
    car = net.vehicle("ZUCAR1")
    t0 = time.monotonic()
    reply = car.ask(
        "chegada",
        id_ponto_recarga="ZU01",
        nivel_bateria=20,
        nivel_carregar=80,
        metodo_pagamento="Pix",
    )
    assert reply["data"]["status"] == "error"
    assert reply["data"]["code"] == "point_unreachable", reply
    assert time.monotonic() - t0 < 2.0  # ROUTER_MANDATORY: no waiting for the 5 s ack timeout


def test_a_station_that_recreates_its_socket_takes_over(net: Net) -> None:
    old = net.station("ZR01")
    old.greet()
    old.datagram()
    # the station heard nothing for 5 s and re-creates its socket; the old one lingers
    new = net.station("ZR01")
    assert new.greet()["type"] == "welcome"
    car = net.vehicle("ZRCAR1")
    assert car.ask("reserva", id_ponto_recarga="ZR01")["data"]["code"] == "reserved"
    hold = new.expect("hold")
    assert hold["vehicle_id"] == "ZRCAR1"
    new.ack(hold)
    assert [m for m in drain_station(old) if m["type"] != "heartbeat"] == []


def drain_station(station: FakeStation, settle: float = 0.3) -> list[dict[str, Any]]:
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(station.recv(settle))
    return got


@pytest.mark.slow
def test_a_real_station_stays_connected_and_online(
    broker: tuple[Proc, BrokerPorts], zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A real ``ev-station`` stays connected: never re-creates its socket, never goes offline."""
    _, ports = broker  # offline after 1.5 s: only datagrams and ZeroMQ traffic keep it online
    bus = Bus(zctx, ports)
    try:
        time.sleep(0.2)
        args = ["python", "-m", "station", "run", "--id", "ZREAL1", "--lat", str(LAT),
                "--lon", str(LON), "--broker", ports.host, "--status-port", str(ports.status),
                "--station-port", str(ports.station)]  # fmt: skip
        with running(args, ready="ready") as station:
            bus.wait_for("point.online")
            # longer than the station's 5 s silence rule: it would have re-created its socket
            with pytest.raises(TimeoutError):
                station.read_until("silent", timeout=6.5)
        topics = [e["topic"] for e in bus.drain() if e["data"].get("point_id") == "ZREAL1"]
        assert "point.registered" in topics
        assert "point.offline" not in topics
        assert_gap_free(bus.events)
    finally:
        bus.close()


@pytest.mark.parametrize("taken", ["station", "events", "history"])
def test_serve_refuses_a_zmq_port_in_use_with_a_clear_message(
    taken: str, tmp_path: Path, ports: BrokerPorts, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    holder = zctx.socket(zmq.PUB)
    holder.setsockopt(zmq.LINGER, 0)
    holder.bind(f"tcp://127.0.0.1:{getattr(ports, taken)}")
    proc = start(["python", "-m", "broker", "serve", *ports.cli_args(), "--db",
                  str(tmp_path / "broker.db")])  # fmt: skip
    try:
        assert proc.popen.wait(timeout=20) == 1
        out = proc.drain()
        assert f":{getattr(ports, taken)}" in out and "cannot bind" in out, out
        assert "Traceback" not in out, out
    finally:
        proc.stop()
        holder.close(linger=0)
