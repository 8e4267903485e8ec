"""vehicle.client against a real ``ev-broker serve`` process.

Points are registered by raw UDP datagrams (the original minimal form), sent
again every 0.3 s by :class:`FakeStations` so that they stay online; the
broker fixture marks a silent point offline after 1.5 s.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import (
    AlreadyReserved,
    BrokerUnreachable,
    Forbidden,
    InvalidRequest,
    NoReservation,
    QueueFull,
    UnknownPoint,
)
from tests.support.procs import BrokerPorts, Proc, start_broker
from vehicle.client import VehicleClient

pytestmark = pytest.mark.e2e

CENTER = (-12.97, -38.50)
POINTS = {"VP01": (-12.97, -38.50), "VP02": (-12.98, -38.51), "VP03": (-13.10, -38.60)}


class FakeStations:
    """Raw UDP status datagrams for a few points, resent until stopped."""

    def __init__(self, ports: BrokerPorts, points: dict[str, tuple[float, float]]) -> None:
        self.addr = (ports.host, ports.status)
        self.points = points
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def send_all(self) -> None:
        for pid, (lat, lon) in self.points.items():
            msg = {"id": pid, "latitude": lat, "longitude": lon, "available": True, "queue_size": 0}
            self.sock.sendto(json.dumps(msg).encode(), self.addr)

    def _run(self) -> None:
        while not self.stopped.wait(0.3):
            self.send_all()

    def __enter__(self) -> FakeStations:
        self.send_all()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def stations(broker: tuple[Proc, BrokerPorts]) -> Iterator[BrokerPorts]:
    _, ports = broker
    with FakeStations(ports, POINTS):
        yield ports


def run(body: Callable[[], Awaitable[None]], limit: float = 20) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(), limit)

    asyncio.run(main())


async def wait_points(c: VehicleClient, n: int) -> None:
    """Wait until ``n`` points are online (restored points stay offline until heard)."""
    for _ in range(100):
        points = await c.consulta(*CENTER)
        if sum(p["estado"] != "offline" for p in points) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("points never came online")


def test_concurrent_requests_on_one_connection_get_their_own_replies(
    stations: BrokerPorts,
) -> None:
    async def body() -> None:
        async with VehicleClient(stations.host, stations.vehicle, "LIB1") as c:
            await wait_points(c, 3)
            radii = [0.5, 2.0, 50.0] * 10
            results = await asyncio.gather(
                *(c.consulta(*CENTER, distancia_max=r) for r in radii), c.status(), c.custos()
            )
        counts = [len(r) for r in results[:-2]]
        assert counts == [1, 2, 3] * 10
        assert results[-2] == {"reserva": None, "sessao": None}
        statement: Any = results[-1]
        assert statement["vehicle_id"] == "LIB1" and statement["sessoes"] == []

    run(body)


def test_reservation_pushes_sua_vez_and_refusals_map_to_classes(stations: BrokerPorts) -> None:
    async def body() -> None:
        async with VehicleClient(stations.host, stations.vehicle, "LIB2") as c:
            await wait_points(c, 3)
            with c.pushes() as stream:
                data = await c.reserva("VP01", 5)
                assert data["code"] == "reserved" and data["posicao"] == 1
                push = await stream.next(5)
            assert push.type == "sua_vez" and push.data["id_ponto_recarga"] == "VP01"
            assert push.data["reservation_id"] == data["reservation_id"]
            with pytest.raises(AlreadyReserved):
                await c.reserva("VP02")
            with pytest.raises(UnknownPoint):
                await c.reserva("NOPE")
            assert (await c.cancelar("VP01"))["code"] == "cancelled"
            with pytest.raises(NoReservation):
                await c.cancelar("VP01")

    run(body)


def test_queue_full_for_the_sixth_vehicle(stations: BrokerPorts) -> None:
    async def body() -> None:
        clients = [VehicleClient(stations.host, stations.vehicle, f"Q{i}") for i in range(6)]
        for c in clients:
            await c.connect()
        try:
            await wait_points(clients[0], 3)
            outcomes = await asyncio.gather(
                *(c.reserva("VP03") for c in clients), return_exceptions=True
            )
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        ok = [o for o in outcomes if isinstance(o, dict)]
        full = [o for o in outcomes if isinstance(o, QueueFull)]
        assert len(ok) == 5 and len(full) == 1
        assert sorted(o["posicao"] for o in ok) == [1, 2, 3, 4, 5]

    run(body)


def test_erro_replies_raise_protocol_errors(stations: BrokerPorts) -> None:
    async def body() -> None:
        async with VehicleClient(stations.host, stations.vehicle, "LIB3") as c:
            with pytest.raises(InvalidRequest) as exc:
                await c.bateria(150, *CENTER)
            assert exc.value.field is not None and "nivel_bateria" in exc.value.field
            await c.status()  # binds the connection to LIB3
            with pytest.raises(Forbidden):
                await c.request("status", {"id_veiculo": "SOMEONE_ELSE"})
            assert (await c.request("ping", {})).type == "pong"

    run(body)


def test_reconnects_after_broker_restart_and_still_gets_pushes(
    stations: BrokerPorts, broker: tuple[Proc, BrokerPorts], tmp_path: Path
) -> None:
    proc, ports = broker
    restarted: list[Proc] = []

    async def body() -> None:
        async with VehicleClient(
            ports.host, ports.vehicle, "LIB4", backoff_initial=0.05, backoff_max=0.5, timeout=10
        ) as c:
            await wait_points(c, 3)
            proc.stop()
            with pytest.raises(BrokerUnreachable):
                await c.request("ping", {}, timeout=0.5)
            restarted.append(
                await asyncio.to_thread(
                    start_broker, ports, str(tmp_path / "broker.db"), "--offline-after", "1.5"
                )
            )
            assert (await c.request("ping", {})).type == "pong"
            assert c.reconnects >= 1
            await wait_points(c, 3)
            with c.pushes() as stream:
                # the push goes to the connection bound most recently: ours, re-bound
                await c.reserva("VP02")
                assert (await stream.next(5)).type == "sua_vez"

    try:
        run(body, 40)
    finally:
        for p in restarted:
            p.stop()
