"""Helpers for tests of the broker's ZeroMQ edges: an event loop per test, a zmq
context, condition waits, a raw station DEALER and a stations edge on a free port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import msgpack
import zmq
import zmq.asyncio

from broker.edges.stations_zmq import StationsEdge
from common.messages import BusEvent, StationToBroker

ANY_PORT = "tcp://127.0.0.1:*"
WAIT_S = 3.0
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(main())


@asynccontextmanager
async def zmq_context() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


async def until(pred: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def hello(point_id: str) -> dict[str, Any]:
    return {
        "type": "hello",
        "id": point_id,
        "latitude": -12.26,
        "longitude": -38.96,
        "potencia_kw": 22.0,
        "preco_kwh": 1.5,
        "boot_id": "b1",
        "interval_s": 2.0,
    }


# Every dealer lives as long as its context, which closes it (zmq_context destroys it):
# a socket dropped by a finished test body is never collected unclosed.
_DEALERS: WeakKeyDictionary[zmq.asyncio.Context, list[zmq.asyncio.Socket]] = WeakKeyDictionary()


def dealer(ctx: zmq.asyncio.Context, endpoint: str, routing_id: str | bytes) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.DEALER)
    _DEALERS.setdefault(ctx, []).append(sock)
    sock.setsockopt(zmq.LINGER, 0)
    rid = routing_id if isinstance(routing_id, bytes) else routing_id.encode()
    sock.setsockopt(zmq.ROUTING_ID, rid)
    sock.connect(endpoint)
    return sock


async def greeted(
    ctx: zmq.asyncio.Context, edge: StationsEdge, rec: Recorder, point_id: str
) -> zmq.asyncio.Socket:
    """A station DEALER whose hello the edge has handed to ``rec``."""
    sock = dealer(ctx, edge.endpoint, point_id)
    heard = len(rec.messages)
    await sock.send(msgpack.packb(hello(point_id)))
    await until(lambda: len(rec.messages) == heard + 1)
    return sock


async def readable(sock: zmq.asyncio.Socket, timeout_ms: int) -> bool:
    """Whether a message is waiting on ``sock`` within ``timeout_ms``."""
    return bool(await sock.poll(timeout_ms))


async def recv_map(sock: zmq.asyncio.Socket, timeout: float = WAIT_S) -> dict[str, Any]:
    frames = await asyncio.wait_for(sock.recv_multipart(), timeout)
    assert len(frames) == 1, frames
    obj = msgpack.unpackb(frames[0])
    assert isinstance(obj, dict)
    return obj


class Recorder:
    """Collects what StationsEdge hands to its callbacks."""

    def __init__(self, fail: bool = False) -> None:
        self.messages: list[tuple[str, StationToBroker]] = []
        self.unroutable: list[str] = []
        self.fail = fail

    def on_message(self, point_id: str, message: StationToBroker) -> None:
        self.messages.append((point_id, message))
        if self.fail:
            raise RuntimeError("callback bug")

    def on_unroutable(self, point_id: str) -> None:
        self.unroutable.append(point_id)


def new_stations_edge(
    ctx: zmq.asyncio.Context, rec: Recorder, heartbeat_s: float = 5.0, **kw: Any
) -> StationsEdge:
    """A stations edge on a free port that reports to ``rec`` (not started)."""
    return StationsEdge(
        ctx,
        ANY_PORT,
        heartbeat_s=heartbeat_s,
        on_message=rec.on_message,
        on_unroutable=rec.on_unroutable,
        **kw,
    )


@asynccontextmanager
async def stations_edge(
    ctx: zmq.asyncio.Context, rec: Recorder, heartbeat_s: float = 5.0, **kw: Any
) -> AsyncIterator[StationsEdge]:
    edge = new_stations_edge(ctx, rec, heartbeat_s, **kw)
    await edge.start()
    try:
        yield edge
    finally:
        await edge.close()


StationsTest = Callable[[zmq.asyncio.Context, Recorder, StationsEdge], Awaitable[None]]


def run_with_stations_edge(
    test: StationsTest, rec: Recorder | None = None, **edge_options: Any
) -> None:
    """Run ``test(ctx, rec, edge)`` on its own loop, context and started stations edge."""

    async def body() -> None:
        async with zmq_context() as ctx:
            recorder = Recorder() if rec is None else rec
            async with stations_edge(ctx, recorder, **edge_options) as edge:
                await test(ctx, recorder, edge)

    run(body())


def stations_edge_test(**edge_options: Any) -> Callable[[StationsTest], Callable[[], None]]:
    """Make ``async def test_x(ctx, rec, edge)`` a plain test run by run_with_stations_edge."""

    def make(test: StationsTest) -> Callable[[], None]:
        def run_test() -> None:
            run_with_stations_edge(test, **edge_options)

        # pytest sees a test without arguments under the body's name and text
        run_test.__name__ = run_test.__qualname__ = getattr(test, "__name__", "test")
        run_test.__doc__ = test.__doc__
        run_test.__module__ = test.__module__
        return run_test

    return make


def make_event(seq: int, topic: str) -> BusEvent:
    return BusEvent(seq=seq, ts=1_700_000_000.0 + seq, topic=topic, data={"n": seq, "p": "CP1"})


class FakeLog:
    """An in-memory event log with the callbacks HistoryServer expects."""

    def __init__(self, n: int) -> None:
        self.events = [make_event(i, "point.status") for i in range(1, n + 1)]
        self.calls: list[tuple[int, int]] = []

    def events_since(self, seq: int, limit: int) -> tuple[list[BusEvent], int, bool]:
        self.calls.append((seq, limit))
        after = [e for e in self.events if e.seq > seq]
        newest = self.events[-1].seq if self.events else 0
        return after[:limit], newest, len(after) > limit

    def snapshot(self) -> dict[str, Any]:
        return {"seq": len(self.events), "points": [{"id": "CP1"}], "queues": {}, "sessions": []}

    def accounts(self) -> dict[str, Any]:
        return {"CAR1": {"total": "12.34", "sessoes": []}}
