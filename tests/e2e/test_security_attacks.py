"""Attacks on a real broker with auth on: each fails, the legitimate path still works,
nothing of the attack is persisted, and the broker restarts after kill -9.

One broker per test (free ports, SQLite in tmp_path). The real station ``SEC01``
has a ``station`` credential for ``SEC*``; the attacker has either nothing or a
valid credential of its own (``other``: station for ``OTH*``). Vehicles and
stations are the raw wire clients of ``tests.support.raw_clients``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from common.credentials import Credential, curve_client, sign_datagram
from tests.support.credentials import curve_client_for
from tests.support.procs import BrokerPorts, Proc, broker_ports, start_broker
from tests.support.raw_clients import (
    HOST,
    LAT,
    LON,
    FakeStation,
    Vehicle,
    http_get,
    metric,
    wait_for,
    zmq_ctx,
)

pytestmark = pytest.mark.e2e

OPTS = ("--offline-after", "60", "--offline-grace", "120")
Ctx = zmq.Context[zmq.Socket[bytes]]


@dataclass
class Scene:
    tmp: Path
    db: str
    ports: BrokerPorts
    broker: Proc
    ctx: Ctx
    real: Credential
    other: Credential

    def restart_after_kill9(self) -> None:
        self.broker.kill9()
        self.broker.stop()
        self.broker = start_broker(self.ports, self.db, *OPTS, standard_legacy=False)

    def rejected(self, edge: str, reason: str) -> float:
        _, text = http_get(self.ports.http, "/metrics")
        return metric(text, f'evcharge_rejected_total{{edge="{edge}",reason="{reason}"}}')

    def station(self, point_id: str, cred: Credential | None) -> FakeStation:
        return FakeStation(
            self.ctx, self.ports.station, point_id, status_port=self.ports.status,
            lat=LAT, lon=LON, price_kwh=1.5, credential=cred,
        )  # fmt: skip

    def points(self) -> set[str]:
        with sqlite3.connect(self.db) as db:
            return {row[0] for row in db.execute("SELECT key FROM point")}

    def sessions(self) -> dict[str, dict[str, Any]]:
        with sqlite3.connect(self.db) as db:
            return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM session")}


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    ports = broker_ports()
    db = str(tmp_path / "broker.db")
    broker = start_broker(ports, db, *OPTS, standard_legacy=False)
    assert ports.creds is not None
    real = ports.creds.load(ports.creds.add("sec", "station", "SEC*"))
    other = ports.creds.load(ports.creds.add("other", "station", "OTH*"))
    with zmq_ctx() as ctx:
        s = Scene(tmp_path, db, ports, broker, ctx, real, other)
        try:
            time.sleep(1.5)  # the broker re-reads the credential table every second
            yield s
        finally:
            s.broker.stop()


@contextlib.contextmanager
def session(scene: Scene, vehicle_id: str) -> Iterator[tuple[FakeStation, Vehicle, str]]:
    """The real station SEC01 running a session for ``vehicle_id`` (20 -> 80 % of 60 kWh)."""
    st = scene.station("SEC01", scene.real)
    car = Vehicle(scene.ports.vehicle, vehicle_id)
    try:
        st.greet()
        st.datagram()
        wait_for(lambda: "SEC01" in scene.points(), what="SEC01 registered")
        car.send({"type": "chegada", "id": "arrive", "data": {
            "id_veiculo": vehicle_id, "id_ponto_recarga": "SEC01", "nivel_bateria": 20,
            "nivel_carregar": 80, "metodo_pagamento": "Pix", "capacidade_kwh": 60}})  # fmt: skip
        start = st.expect("start")
        st.ack(start)
        reply = car.reply()
        assert reply["data"]["code"] == "started", reply
        yield st, car, str(start["session_id"])
    finally:
        car.close()
        st.close()


def completion(session_id: str, vehicle_id: str, **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "type": "session_complete", "session_id": session_id, "vehicle_id": vehicle_id,
        "energia_kwh": 36.0, "nivel_inicial": 20.0, "nivel_final": 80.0,
        "started_at": now - 60, "ended_at": now, "reason": "target_reached", **extra,
    }  # fmt: skip


def raw_dealer(scene: Scene, routing_id: str, cred: Credential | None) -> zmq.Socket[bytes]:
    sock = scene.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, routing_id.encode())
    curve_client(sock, cred)
    sock.connect(f"tcp://{HOST}:{scene.ports.station}")
    return sock


def statement(scene: Scene, vehicle_id: str) -> dict[str, Any]:
    """The vehicle's statement as the broker keeps it (the history socket's ``accounts``:
    a new vehicle connection may not read an unregistered id's history)."""
    accounts = history_reply(scene, {"op": "accounts"}, "consumer")["accounts"]
    return dict(accounts.get(vehicle_id) or {"total": 0.0, "sessoes": []})


def finish_legitimately(scene: Scene, st: FakeStation, car: Vehicle, sid: str) -> None:
    st.send(completion(sid, car.vehicle_id or ""))
    assert st.expect("session_ack")["session_id"] == sid
    bill = car.push("custo_final")["data"]
    assert bill["session_id"] == sid and float(bill["cost"]) == pytest.approx(54.0)


# --- 5555 ---------------------------------------------------------------------------------


def test_a_dealer_without_credentials_cannot_complete_a_session(scene: Scene) -> None:
    with session(scene, "VICTIM1") as (st, car, sid):
        evil = raw_dealer(scene, "EVIL", None)
        evil.send(msgpack.packb(completion(sid, "VICTIM1", nivel_inicial=0.0, nivel_final=100.0)))
        wait_for(lambda: scene.rejected("stations", "handshake_failed") > 0, what="the refusal")
        evil.close(linger=0)
        assert car.ask("custos")["data"]["sessoes"] == []
        finish_legitimately(scene, st, car, sid)
    scene.restart_after_kill9()
    assert [s["session_id"] for s in statement(scene, "VICTIM1")["sessoes"]] == [sid]


def test_another_stations_credential_cannot_complete_or_ack_for_this_point(scene: Scene) -> None:
    with session(scene, "VICTIM2") as (st, car, sid):
        # its own routing id is not in the pattern: dropped at the edge
        evil = raw_dealer(scene, "EVIL", scene.other)
        evil.send(msgpack.packb(completion(sid, "VICTIM2")))
        wait_for(lambda: scene.rejected("stations", "point_not_covered") > 0, what="drop")
        # a point it does cover: the session is not that point's
        own = scene.station("OTH1", scene.other)
        own.greet()
        own.send(completion(sid, "VICTIM2"))
        wait_for(lambda: scene.rejected("stations", "not_session_owner") > 0, what="drop")
        with pytest.raises(TimeoutError):
            own.recv_type("session_ack", timeout=1.0)
        own.close()
        evil.close(linger=0)
        assert car.ask("custos")["data"]["sessoes"] == []
        finish_legitimately(scene, st, car, sid)
    assert scene.points() == {"SEC01", "OTH1"}
    scene.restart_after_kill9()
    assert len(statement(scene, "VICTIM2")["sessoes"]) == 1


def test_a_live_routing_id_cannot_be_taken_over(scene: Scene) -> None:
    with session(scene, "VICTIM3") as (st, car, sid):
        for cred in (None, scene.other):  # no key, then a valid key of another station
            thief = raw_dealer(scene, "SEC01", cred)
            hello = {"type": "hello", "id": "SEC01", "latitude": LAT, "longitude": LON,
                     "potencia_kw": 50.0, "preco_kwh": 1e30, "boot_id": "evil"}  # fmt: skip
            thief.send(msgpack.packb(hello))
            time.sleep(0.5)
            assert not thief.poll(500), "the thief was answered"
            thief.close(linger=0)
        # the real station still gets its commands and bills at its own price
        finish_legitimately(scene, st, car, sid)
    with sqlite3.connect(scene.db) as db:
        (value,) = db.execute("SELECT value FROM point WHERE key = 'SEC01'").fetchone()
    assert json.loads(value)["preco_kwh"] == 1.5
    scene.restart_after_kill9()


def test_figures_out_of_bounds_are_dropped_and_the_broker_still_restarts(scene: Scene) -> None:
    with session(scene, "VICTIM4") as (st, car, sid):
        # the raw DEALER may send NaN/inf in msgpack, which JSON could not carry
        for bad in (
            {"nivel_final": float("nan")},
            {"nivel_final": float("inf")},
            {"nivel_final": 10.0},  # below the initial level
            {"energia_kwh": 61.0},  # more than the session's capacity
            {"energia_kwh": float("nan")},
            {"nivel_inicial": -5.0},
        ):
            st.send(completion(sid, "VICTIM4", **bad))
        st.send({"type": "hello", "id": "SEC01", "latitude": LAT, "longitude": LON,
                 "potencia_kw": 50.0, "preco_kwh": 1e30, "boot_id": "boot-1"})  # fmt: skip
        st.send({"type": "hello", "id": "SEC01", "latitude": LAT, "longitude": LON,
                 "potencia_kw": float("nan"), "preco_kwh": 1.5, "boot_id": "boot-1"})  # fmt: skip
        wait_for(
            lambda: (
                scene.rejected("stations", "invalid") + scene.rejected("stations", "figures") >= 8
            ),
            what="eight drops",
        )
        assert car.ask("custos")["data"]["sessoes"] == []
        scene.restart_after_kill9()
        st.close()
        st = scene.station("SEC01", scene.real)
        st.greet()
        car2 = Vehicle(scene.ports.vehicle, "VICTIM4")
        try:
            st.send(completion(sid, "VICTIM4"))
            assert st.expect("session_ack")["session_id"] == sid
            wait_for(lambda: len(statement(scene, "VICTIM4")["sessoes"]) == 1, what="billed")
        finally:
            car2.close()
            st.close()


# --- 8082 ---------------------------------------------------------------------------------


def send_udp(scene: Scene, data: bytes, source: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.sendto(data, (HOST, scene.ports.status))


def datagram(point_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": point_id, "latitude": LAT, "longitude": LON, "available": False,
            "estado": "indisponivel", "boot_id": "evil-boot", "seq": 1, "ts": time.time(),
            **extra}  # fmt: skip


def test_spoofed_datagrams_cannot_end_a_session_or_create_points(scene: Scene) -> None:
    with session(scene, "VICTIM5") as (st, car, sid):
        plain = json.dumps(datagram("SEC01")).encode()
        send_udp(scene, plain)  # unsigned, for a point without a legacy credential
        send_udp(scene, sign_datagram(scene.other, plain))  # a valid key of another point
        forged = sign_datagram(scene.real, plain).replace(b'"evil-boot"', b'"evil-boot2"')
        send_udp(scene, forged)  # a real signature over other bytes
        old = datagram("SEC01", boot_id="older", ts=time.time() - 120)
        send_udp(scene, sign_datagram(scene.real, json.dumps(old).encode()))  # out of window
        for i in range(300):  # spoofed ids cannot fill the catalogue
            send_udp(scene, json.dumps(datagram(f"SPOOF{i:03d}")).encode())
        wait_for(lambda: scene.rejected("status", "unsigned") >= 301, what="301 refusals")
        for reason in ("point_not_covered", "bad_mac", "ts_out_of_window"):
            assert scene.rejected("status", reason) == 1, reason
        assert sid in scene.sessions()  # still running, not ended as a fault
        assert scene.points() == {"SEC01"}
        finish_legitimately(scene, st, car, sid)
    scene.restart_after_kill9()
    assert scene.points() == {"SEC01"}


def test_a_replayed_signed_datagram_of_an_older_boot_is_refused(scene: Scene) -> None:
    st = scene.station("SEC02", scene.real)
    try:
        old = json.dumps(datagram("SEC02", boot_id="boot-A", estado="disponivel",
                                  available=True)).encode()  # fmt: skip
        captured = sign_datagram(scene.real, old)
        send_udp(scene, captured)
        wait_for(lambda: "SEC02" in scene.points(), what="SEC02 registered by a datagram")
        time.sleep(0.1)
        newer = datagram("SEC02", boot_id="boot-B", estado="disponivel", available=True)
        send_udp(scene, sign_datagram(scene.real, json.dumps(newer).encode()))
        send_udp(scene, captured)  # the attacker replays boot-A
        wait_for(lambda: scene.rejected("status", "replayed") == 1, what="replay refused")
    finally:
        st.close()


def test_legacy_points_send_unsigned_datagrams_only_from_their_address(scene: Scene) -> None:
    assert scene.ports.creds is not None
    scene.ports.creds.add("old1", "legacy-station", "LEG1", "127.0.0.1")
    time.sleep(1.5)
    body = json.dumps({"id": "LEG1", "latitude": LAT, "longitude": LON, "available": True})
    send_udp(scene, body.encode(), source="127.0.0.2")  # spoofed from elsewhere
    wait_for(lambda: scene.rejected("status", "unsigned") == 1, what="wrong source refused")
    assert "LEG1" not in scene.points()
    send_udp(scene, body.encode(), source="127.0.0.1")
    wait_for(lambda: "LEG1" in scene.points(), what="legacy point registered")


# --- 5556 / 5557 --------------------------------------------------------------------------


def history_reply(scene: Scene, request: dict[str, Any], cred: str | None) -> Any:
    sock = scene.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if cred is not None:
        curve_client_for(sock, scene.ports.history, cred)
    sock.connect(f"tcp://{HOST}:{scene.ports.history}")
    try:
        sock.send(msgpack.packb(request))
        if not sock.poll(2000):
            return None
        return msgpack.unpackb(sock.recv())
    finally:
        sock.close(linger=0)


def test_only_consumers_read_the_bus_and_history(scene: Scene) -> None:
    assert history_reply(scene, {"op": "accounts"}, None) is None
    assert history_reply(scene, {"op": "accounts"}, "station") is None  # wrong role
    assert "accounts" in history_reply(scene, {"op": "accounts"}, "consumer")
    toggle = {"op": "set_availability", "point_id": "SEC01", "available": False, "reason": "x"}
    assert "operator" in history_reply(scene, toggle, "consumer")["error"]  # consumers only read
    assert scene.rejected("history", "not_operator") == 1
    wait_for(lambda: scene.rejected("consumers", "wrong_role") >= 1, what="role refusal")
    subs = []
    for cred in (None, "consumer"):
        sub = scene.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        if cred is not None:
            curve_client_for(sub, scene.ports.events, cred)
        sub.connect(f"tcp://{HOST}:{scene.ports.events}")
        subs.append(sub)
    time.sleep(1.0)
    car = Vehicle(scene.ports.vehicle, "BUSCAR")
    car.ask("ping")
    car.close()
    anonymous, consumer = subs
    assert consumer.poll(5000) and consumer.recv_multipart()[0] == b"vehicle.connected"
    assert not anonymous.poll(500)
    wait_for(lambda: scene.rejected("consumers", "handshake_failed") >= 1, what="counted")
    for s in subs:
        s.close(linger=0)


def test_a_revoked_consumer_loses_history_and_bus_within_two_seconds(scene: Scene) -> None:
    assert scene.ports.creds is not None
    path = scene.ports.creds.add("reader", "consumer")
    time.sleep(1.5)
    cred = scene.ports.creds.load(path)
    sub = scene.ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    curve_client(sub, cred)
    sub.connect(f"tcp://{HOST}:{scene.ports.events}")
    dealer = scene.ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    curve_client(dealer, cred)
    dealer.connect(f"tcp://{HOST}:{scene.ports.history}")
    try:
        dealer.send(msgpack.packb({"op": "accounts"}))
        assert dealer.poll(5000) and "accounts" in msgpack.unpackb(dealer.recv())
        scene.ports.creds.revoke("reader")
        t0 = time.monotonic()
        wait_for(lambda: scene.rejected("consumers", "unknown_key") >= 1, timeout=5,
                 what="the bus re-bound and the revoked key refused")  # fmt: skip
        assert time.monotonic() - t0 < 3.0
        dealer.send(msgpack.packb({"op": "accounts"}))
        assert dealer.poll(5000)
        assert "forbidden" in msgpack.unpackb(dealer.recv())["error"]
        while sub.poll(100):
            sub.recv_multipart()
        car = Vehicle(scene.ports.vehicle, "AFTERREVOKE")
        car.ask("ping")
        car.close()
        assert not sub.poll(1000)
    finally:
        sub.close(linger=0)
        dealer.close(linger=0)


def test_a_revoked_station_is_dropped_within_two_seconds(scene: Scene) -> None:
    assert scene.ports.creds is not None
    path = scene.ports.creds.add("temp", "station", "TMP1")
    time.sleep(1.5)
    st = scene.station("TMP1", scene.ports.creds.load(path))
    try:
        st.greet()
        scene.ports.creds.revoke("temp")
        time.sleep(2.0)
        st.hello()
        wait_for(lambda: scene.rejected("stations", "credential_revoked") >= 1, what="drop")
        with pytest.raises(TimeoutError):
            st.recv_type("welcome", timeout=1.0)
    finally:
        st.close()
