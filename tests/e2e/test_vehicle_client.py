"""vehicle.client and vehicle.sync_client against a small real TCP server speaking the protocol.

:class:`ProtocolServer` is a real asyncio TCP server on a free port that knows a
few request types (enough to exercise correlation, pushes, error replies,
timeouts and reconnection); the end-to-end tests run the same client against
the real broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from common.errors import (
    BadJson,
    BrokerUnreachable,
    InvalidRequest,
    QueueFull,
    RefusedInvalid,
    RequestRefused,
    RequestTimeout,
    TransportError,
    UnknownType,
)
from tests.support.procs import free_port
from tests.support.vehicle_server import (
    POINT,
    ProtocolServer,
    run_with_server,
    server_thread,
)
from vehicle.client import Push, VehicleClient
from vehicle.sync_client import SyncVehicleClient


def test_concurrent_requests_are_matched_by_id_even_out_of_order() -> None:
    async def body(server: ProtocolServer) -> None:
        async with VehicleClient("127.0.0.1", server.port, "CAR1") as c:
            delays = [0.3, 0.2, 0.1, 0.0]
            replies = await asyncio.gather(
                *(c.request("echo", {"tag": i, "delay": d}) for i, d in enumerate(delays))
            )
        assert [r.data["tag"] for r in replies] == [0, 1, 2, 3]
        assert [r.type for r in replies] == ["echo"] * 4
        ids = [r["id"] for r in server.requests]
        assert len(set(ids)) == 4 and all(isinstance(i, int) for i in ids)

    run_with_server(body)


def test_typed_methods_send_the_protocol_fields() -> None:
    async def body(server: ProtocolServer) -> None:
        async with VehicleClient("127.0.0.1", server.port, "CAR7") as c:
            points = await c.consulta(-12.9, -38.4, distancia_max=5)
            nearby = await c.bateria(15, -12.9, -38.4, limite=3)
            rtt = await c.ping()
        assert points == [POINT] and nearby == [POINT] and rtt > 0
        consulta, bateria = server.requests[0], server.requests[1]
        assert consulta["type"] == "consulta"
        assert consulta["data"]["id_veiculo"] == "CAR7"
        assert consulta["data"]["localizacao"] == {"latitude": -12.9, "longitude": -38.4}
        assert consulta["data"]["distancia_max"] == 5
        assert "timestamp" in consulta["data"]
        assert bateria["data"]["nivel_bateria"] == 15 and bateria["data"]["limite"] == 3

    run_with_server(body)


def test_pushes_reach_callbacks_and_streams() -> None:
    async def body(server: ProtocolServer) -> None:
        seen: list[Push] = []
        async with VehicleClient("127.0.0.1", server.port, "CAR1") as c:
            unsubscribe = c.subscribe(seen.append)
            with c.pushes() as stream:
                data = await c.reserva("CP01", 5)
                push = await stream.next(2)
            unsubscribe()
        assert data["code"] == "reserved" and data["posicao"] == 1
        assert push.type == "sua_vez" and push.data["id_ponto_recarga"] == "CP01"
        assert [p.type for p in seen] == ["sua_vez"]

    run_with_server(body)


def test_async_callback_runs_as_task() -> None:
    async def body(server: ProtocolServer) -> None:
        got = asyncio.Event()

        async def on_push(push: Push) -> None:
            got.set()

        async with VehicleClient("127.0.0.1", server.port, "CAR1") as c:
            c.subscribe(on_push)
            await c.reserva("CP01")
            await asyncio.wait_for(got.wait(), 2)

    run_with_server(body)


def test_erro_replies_and_refusals_raise_their_classes() -> None:
    async def body(server: ProtocolServer) -> None:
        async with VehicleClient("127.0.0.1", server.port, "CAR1") as c:
            with pytest.raises(InvalidRequest) as invalid:
                await c.bateria(150, 0, 0)
            assert invalid.value.field == "nivel_bateria" and invalid.value.code == "invalid"
            with pytest.raises(UnknownType):
                await c.request("nope", {})
            with pytest.raises(QueueFull) as full:
                await c.reserva("FULL")
            assert isinstance(full.value, RequestRefused) and full.value.message == "Queue full"
            with pytest.raises(RefusedInvalid):
                await c.reserva("BAD")
            # an erro without id belongs to the oldest request in flight
            with pytest.raises(BadJson):
                await c.request("noid", {}, timeout=1)
            assert (await c.request("ping")).type == "pong"

    run_with_server(body)


def test_request_timeout_then_the_connection_still_works() -> None:
    async def body(server: ProtocolServer) -> None:
        async with VehicleClient("127.0.0.1", server.port, "CAR1", timeout=0.2) as c:
            with pytest.raises(RequestTimeout):
                await c.request("never", {})
            with pytest.raises(RequestTimeout):
                await c.request("echo", {"delay": 0.5})
            assert (await c.request("echo", {"tag": "after"}, timeout=2)).data["tag"] == "after"
            await asyncio.sleep(0.4)  # the late echo reply arrives and is dropped
            assert (await c.request("ping")).type == "pong"

    run_with_server(body)


def test_reconnects_with_backoff_and_rebinds_the_vehicle_id() -> None:
    async def body(server: ProtocolServer) -> None:
        async with VehicleClient(
            "127.0.0.1", server.port, "CAR9", backoff_initial=0.05, timeout=3
        ) as c:
            assert (await c.request("ping")).type == "pong"
            with pytest.raises(BrokerUnreachable):
                await c.request("drop", {})
            # the next request waits for the background reconnection
            assert (await c.request("ping")).type == "pong"
            assert c.reconnects == 1
            for _ in range(50):
                if any(r["type"] == "status" for r in server.requests):
                    break
                await asyncio.sleep(0.02)
        assert server.connections == 2
        rebind = [r for r in server.requests if r["type"] == "status"]
        assert rebind and rebind[0]["data"]["id_veiculo"] == "CAR9"

    run_with_server(body)


def test_without_reconnect_a_lost_connection_stays_lost() -> None:
    async def body(server: ProtocolServer) -> None:
        async with VehicleClient("127.0.0.1", server.port, "CAR1", reconnect=False) as c:
            with pytest.raises(BrokerUnreachable):
                await c.request("drop", {})
            with pytest.raises(BrokerUnreachable):
                await c.request("ping")

    run_with_server(body)


def test_unreachable_broker_raises_broker_unreachable() -> None:
    async def body() -> None:
        c = VehicleClient("127.0.0.1", free_port(), "CAR1", connect_timeout=1)
        with pytest.raises(BrokerUnreachable) as exc:
            await c.connect()
        assert "cannot reach broker" in exc.value.message
        await c.close()

    asyncio.run(body())


def test_close_ends_push_streams_and_fails_later_requests() -> None:
    async def body(server: ProtocolServer) -> None:
        c = VehicleClient("127.0.0.1", server.port, "CAR1")
        await c.connect()
        stream = c.pushes()
        waiter = asyncio.ensure_future(stream.next(5))
        await asyncio.sleep(0.01)
        await c.close()
        with pytest.raises(TransportError):
            await waiter
        with pytest.raises(TransportError):
            await c.request("ping")

    run_with_server(body)


def test_push_stream_drops_oldest_when_full() -> None:
    async def body(server: ProtocolServer) -> None:
        async with VehicleClient("127.0.0.1", server.port, "CAR1") as c:
            with c.pushes(capacity=2) as stream:
                for point in ("A", "B", "C"):
                    await c.reserva(point)
                await asyncio.sleep(0.1)
                got = [(await stream.next(1)).data["id_ponto_recarga"] for _ in range(2)]
            assert got == ["B", "C"] and stream.dropped == 1

    run_with_server(body)


@pytest.fixture
def threaded_server() -> Iterator[ProtocolServer]:
    with server_thread() as server:
        yield server


def test_sync_client_blocks_for_replies_and_queues_pushes(threaded_server: ProtocolServer) -> None:
    with SyncVehicleClient("127.0.0.1", threaded_server.port, "CAR5") as c:
        assert c.consulta(-12.9, -38.4) == [POINT]
        assert c.reserva("CP01")["code"] == "reserved"
        push = c.next_push("sua_vez", timeout=2)
        assert push.data["reservation_id"] == "R1"
        with pytest.raises(QueueFull):
            c.reserva("FULL")
        with pytest.raises(RequestTimeout):
            c.next_push(timeout=0.1)
        assert c.vehicle_id == "CAR5"


def test_concurrent_first_requests_share_one_lazy_connection() -> None:
    async def body(server: ProtocolServer) -> None:
        c = VehicleClient("127.0.0.1", server.port, "CAR1")
        try:
            replies = await asyncio.gather(*(c.request("ping") for _ in range(10)))
        finally:
            await c.close()
        assert [r.type for r in replies] == ["pong"] * 10
        assert server.connections == 1

    run_with_server(body)
