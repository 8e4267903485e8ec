"""Vehicle gateways end to end: real core, real gateways, real sockets.

* one connection's reads and writes, pipelined, keep their order and read their writes
  (``serve --gateways 1``: the supervised local gateway);
* kill -9 of the core while 50 vehicles reserve and arrive: every request answered
  once (its committed reply or ``unavailable``), connections kept, nothing lost;
* kill -9 of one of three gateways: its vehicles reconnect to the others, never
  ``forbidden``, their reservations kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_broker_recovery import all_events
from tests.support.gateways import gateway_stack
from tests.support.procs import broker_ports, free_port, start, start_broker
from tests.support.raw_clients import (
    LAT,
    LON,
    keepalive,
    send_status,
    vehicle,
    wait_for,
    zmq_ctx,
)
from vehicle.client import VehicleClient

pytestmark = pytest.mark.e2e

HERE = {"latitude": LAT, "longitude": LON}


def _sees(port: int, count: int, prefix: str) -> None:
    """Wait until a vehicle on ``port`` sees ``count`` online points named ``prefix...``."""
    with vehicle(port) as v:

        def seen() -> bool:
            reply = v.request("consulta", {"localizacao": HERE, "limite": 100})
            return (
                sum(
                    1
                    for p in reply["data"]
                    if p["id"].startswith(prefix) and p["estado"] == "disponivel"
                )
                >= count
            )

        wait_for(seen, timeout=30, what=f"{count} points {prefix}* online")


def test_reads_and_writes_on_one_connection_keep_order_and_read_their_writes(
    tmp_path: Path,
) -> None:
    ports = broker_ports()
    core = start_broker(
        ports, str(tmp_path / "b.db"), "--gateways", "1", "--gateway-port", str(free_port())
    )
    try:
        assert any("(1 gateways)" in line for line in core.lines)
        send_status(ports.status, "CP01", latitude=LAT, longitude=LON)
        _sees(ports.vehicle, 1, "CP01")
        with vehicle(ports.vehicle, "V1") as v:
            v.ask("status")  # binds V1 (the core decides who a connection speaks for)
            for round_ in range(10):
                base = round_ * 6
                where = {"localizacao": HERE, "id_veiculo": "V1"}
                batch = [
                    ("reserva", {"id_veiculo": "V1", "id_ponto_recarga": "CP01"}),
                    ("consulta", where),
                    ("bateria", {**where, "nivel_bateria": 50, "limite": 5}),
                    ("cancelar", {"id_veiculo": "V1", "id_ponto_recarga": "CP01"}),
                    ("consulta", where),
                    ("ping", {}),
                ]
                v.send(
                    "".join(
                        json.dumps({"type": t, "data": d, "id": base + i}) + "\n"
                        for i, (t, d) in enumerate(batch)
                    )
                )
                replies = [v.reply() for _ in batch]
                assert [r["id"] for r in replies] == [base + i for i in range(6)], replies
                assert replies[0]["data"]["code"] == "reserved", replies[0]
                (seen,) = [p for p in replies[1]["data"] if p["id"] == "CP01"]
                assert seen["queue_size"] == 1 and seen["estado"] == "reservado", (round_, seen)
                (seen,) = [p for p in replies[2]["data"]["pontos"] if p["id"] == "CP01"]
                assert seen["queue_size"] == 1 and seen["espera_estimada_min"] > 0, seen
                assert replies[3]["data"]["code"] == "cancelled", replies[3]
                (seen,) = [p for p in replies[4]["data"] if p["id"] == "CP01"]
                assert seen["queue_size"] == 0 and seen["estado"] == "disponivel", seen
                assert replies[5]["type"] == "pong"
    finally:
        core.stop()


# --- kill -9 of the core -------------------------------------------------------------------

FLEET = 50


class Trip:
    """One raw vehicle: reserva, then chegada, then ping, on one connection."""

    def __init__(self, index: int) -> None:
        self.vid = f"T{index:03d}"
        self.point = f"GW{index + 1:04d}"
        self.replies: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 3: []}
        self.answered_at: dict[int, float] = {}

    async def run(self, port: int, delay: float, done: asyncio.Event) -> None:
        await asyncio.sleep(delay)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            arrive = {
                "id_veiculo": self.vid,
                "id_ponto_recarga": self.point,
                "nivel_bateria": 20,
                "nivel_carregar": 30,
                "capacidade_kwh": 40,
                "metodo_pagamento": "Pix",
            }
            steps = [
                ("reserva", {"id_veiculo": self.vid, "id_ponto_recarga": self.point}),
                ("chegada", arrive),
            ]
            for rid, (kind, data) in enumerate(steps, 1):
                await self._ask(reader, writer, rid, kind, data)
            await done.wait()  # every trip answered: now the connection must still work
            await self._ask(reader, writer, 3, "ping", {})
        finally:
            writer.close()

    async def _ask(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rid: int,
        kind: str,
        data: dict[str, Any],
    ) -> None:
        writer.write(json.dumps({"type": kind, "data": data, "id": rid}).encode() + b"\n")
        while True:
            line = await asyncio.wait_for(reader.readline(), 30)
            assert line, f"{self.vid}: connection closed waiting for {kind}"
            msg = json.loads(line)
            if "id" in msg:
                self.replies[msg["id"]].append(msg)
                self.answered_at.setdefault(msg["id"], time.monotonic())
            if msg.get("id") == rid:
                return


def _code(reply: dict[str, Any]) -> str:
    return str(reply["data"].get("code"))


def test_core_kill9_during_trips_every_request_answered_once_nothing_lost(
    tmp_path: Path,
) -> None:
    with gateway_stack(tmp_path, 2, "--offline-grace", "3") as st:
        ports = st.ports
        assert ports.creds is not None
        fleet = start(
            [
                "python", "-m", "station", "fleet",
                "--count", str(FLEET), "--prefix", "GW", "--radius-km", "3",
                "--center", f"{LAT},{LON}", "--speed", "3000", "--interval", "0.5",
                "--broker-silence", "1", "--status-port", str(ports.status),
                "--station-port", str(ports.station),
                "--credentials", str(ports.creds.station),
            ]
        )  # fmt: skip
        try:
            _sees(st.vehicle_port, FLEET, "GW")
            trips = [Trip(i) for i in range(FLEET)]

            async def drive() -> float:
                done = asyncio.Event()
                tasks = [
                    asyncio.create_task(t.run(st.vehicle_port, i * 0.01, done))
                    for i, t in enumerate(trips)
                ]
                await asyncio.sleep(0.25)
                assert st.core is not None
                st.core.kill9()  # mid-way: some requests in flight, the rest sent meanwhile
                st.core.stop()  # (its output pipe)
                killed = time.monotonic()
                await asyncio.to_thread(st.start_core)
                while not all(len(t.replies[2]) == 1 for t in trips):
                    await asyncio.sleep(0.05)
                done.set()
                await asyncio.gather(*tasks)
                return killed

            killed = asyncio.run(asyncio.wait_for(drive(), 60))
        finally:
            fleet.stop()
        held = sum(1 for t in trips for at in t.answered_at.values() if at > killed)
        assert held > 0, "no request crossed the outage"
        reserved: dict[str, str] = {}
        started: dict[str, str] = {}
        for t in trips:
            assert [len(t.replies[i]) for i in (1, 2, 3)] == [1, 1, 1], (t.vid, t.replies)
            (res,), (arr,), (pong,) = t.replies[1], t.replies[2], t.replies[3]
            assert pong["type"] == "pong", pong  # the connection outlived the core
            # a refusal is a first answer (a point still offline after the restart ...);
            # these codes would be a request applied twice
            assert _code(res) not in ("already_queued", "already_reserved", "forbidden"), res
            assert _code(arr) not in ("point_busy", "forbidden"), (t.vid, arr)
            if _code(res) == "reserved":
                reserved[t.vid] = res["data"]["reservation_id"]
            if _code(arr) == "started":
                started[t.vid] = arr["data"]["session_id"]
        assert len(reserved) >= FLEET // 2 and started, (reserved, started)
        with zmq_ctx() as ctx:

            def billed() -> list[dict[str, Any]]:
                return [
                    e for e in all_events(ctx, ports.history) if e["topic"] == "charging.completed"
                ]

            wait_for(
                lambda: {e["data"]["session_id"] for e in billed()} >= set(started.values()),
                timeout=30,
                what="every started session billed",
            )
            events = all_events(ctx, ports.history)
        created = [e["data"] for e in events if e["topic"] == "reservation.created"]
        by_vehicle = [c["vehicle_id"] for c in created]
        assert len(by_vehicle) == len(set(by_vehicle)), "a reservation applied twice"
        assert {c["reservation_id"] for c in created} >= set(reserved.values())
        starts = [e["data"] for e in events if e["topic"] == "charging.started"]
        assert {s["session_id"] for s in starts} >= set(started.values())
        by_starter = [s["vehicle_id"] for s in starts]
        assert len(by_starter) == len(set(by_starter)), "a start applied twice"
        bills = [e["data"]["session_id"] for e in events if e["topic"] == "charging.completed"]
        assert len(bills) == len(set(bills)), "a session billed twice"


# --- kill -9 of a gateway ------------------------------------------------------------------

DRIVERS = 30


def test_gateway_kill9_its_vehicles_reconnect_to_the_others_never_forbidden(
    tmp_path: Path,
) -> None:
    points = [f"KP{i:02d}" for i in range(DRIVERS)]
    with gateway_stack(tmp_path, 3) as st, keepalive(st.ports.status, *points):
        for p in points:
            send_status(st.ports.status, p)
        _sees(st.vehicle_port, DRIVERS, "KP")

        async def drive() -> None:
            # registered: a reconnection proves the id with its token again (an open id's
            # history stays with the connection that made it: security contract)
            clients = [
                VehicleClient(
                    "127.0.0.1",
                    st.vehicle_port,
                    f"K{i:02d}",
                    register=True,
                    backoff_initial=0.05,
                    backoff_max=0.2,
                )
                for i in range(DRIVERS)
            ]
            try:
                reservations = {}
                for c, p in zip(clients, points, strict=True):
                    await c.connect()
                    reservations[c.vehicle_id] = (await c.reserva(p))["reservation_id"]
                st.gateways[0].kill9()
                st.gateways[0].stop()
                killed = time.monotonic()
                while all(c.connected for c in clients) and time.monotonic() - killed < 2:
                    await asyncio.sleep(0.005)  # until the vehicles hear of it
                while not all(c.connected for c in clients) and time.monotonic() - killed < 5:
                    await asyncio.sleep(0.01)
                back = time.monotonic() - killed
                dropped = [c for c in clients if c.reconnects]
                assert dropped, "no vehicle was on the gateway killed"
                assert back <= 2.0, f"reconnected after {back:.2f} s"
                for c in clients:  # never forbidden; every reservation still there
                    status = await c.status()
                    assert status["reserva"]["reservation_id"] == reservations[c.vehicle_id]
            finally:
                for c in clients:
                    await c.close()

        asyncio.run(asyncio.wait_for(drive(), 60))


# --- pushes due while the core is away ---------------------------------------------------


def test_pushes_due_during_a_core_outage_reach_their_vehicles_after_it(tmp_path: Path) -> None:
    # a turn held for 3 s expires while the core is down: after the restart the holder
    # is told (reserva_expirada) and the next in the queue gets the turn (sua_vez),
    # on the connections they kept through the outage
    with (
        gateway_stack(tmp_path, 1, "--hold-minutes", "0.05") as st,
        keepalive(st.ports.status, "PP01"),
    ):
        send_status(st.ports.status, "PP01")
        _sees(st.vehicle_port, 1, "PP01")
        with vehicle(st.vehicle_port, "HOLDER") as a, vehicle(st.vehicle_port, "NEXT") as b:
            assert a.ask("reserva", id_ponto_recarga="PP01")["data"]["code"] == "reserved"
            assert b.ask("reserva", id_ponto_recarga="PP01")["data"]["posicao"] == 2
            assert st.core is not None
            st.core.kill9()
            st.core.stop()
            time.sleep(3.5)  # the turn's deadline passes while the core is down
            st.start_core()
            assert a.push("reserva_expirada", timeout=20)["data"]["id_ponto_recarga"] == "PP01"
            assert b.push("sua_vez", timeout=20)["data"]["id_ponto_recarga"] == "PP01"


def test_pushes_due_while_a_paused_gateway_was_dropped_reach_its_vehicles(
    tmp_path: Path,
) -> None:
    # the gateway is stopped (SIGSTOP) longer than the core waits for a silent gateway:
    # the core drops it and its connections, the turn expires meanwhile; when it runs
    # again it re-attaches the connections it kept and the pushes reach them
    with (
        gateway_stack(tmp_path, 1, "--hold-minutes", "0.05") as st,
        keepalive(st.ports.status, "PG01"),
    ):
        send_status(st.ports.status, "PG01")
        _sees(st.vehicle_port, 1, "PG01")
        with vehicle(st.vehicle_port, "PHOLDER") as a, vehicle(st.vehicle_port, "PNEXT") as b:
            assert a.ask("reserva", id_ponto_recarga="PG01")["data"]["code"] == "reserved"
            assert b.ask("reserva", id_ponto_recarga="PG01")["data"]["posicao"] == 2
            pid = st.gateways[0].pid
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(4.0)  # dropped after 2 s of silence; the 3 s turn expires
            finally:
                os.kill(pid, signal.SIGCONT)
            assert a.push("reserva_expirada", timeout=20)["data"]["id_ponto_recarga"] == "PG01"
            assert b.push("sua_vez", timeout=20)["data"]["id_ponto_recarga"] == "PG01"


def test_a_request_held_past_core_wait_is_answered_unavailable_on_an_open_connection(
    tmp_path: Path,
) -> None:
    with gateway_stack(tmp_path, 0) as st:
        st.start_gateway("--core-wait", "1")
        with vehicle(st.vehicle_port, "WAITER") as v:
            assert v.ask("status")["type"] == "status_veiculo"
            assert st.core is not None
            st.core.kill9()
            st.core.stop()
            started = time.monotonic()
            reply = v.ask("status", timeout=15)
            assert reply["type"] == "erro" and reply["data"]["code"] == "unavailable", reply
            assert 0.9 <= time.monotonic() - started < 10
            # reads are still answered from the replica meanwhile
            assert v.ask("consulta", localizacao=HERE)["type"] == "consulta_response"
            st.start_core()
            wait_for(lambda: v.ask("status")["type"] == "status_veiculo", timeout=20,
                     what="the restarted core answering on the same connection")  # fmt: skip
