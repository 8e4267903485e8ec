"""The broker's ZeroMQ edges driven in-process with real sockets on free ports.

StationsEdge (ROUTER), BusPublisher (PUB) and HistoryServer (ROUTER) are
started on ``tcp://127.0.0.1:*`` and talked to by real DEALER, SUB and REQ
sockets. Every test runs its own event loop and zmq context and closes them
in ``finally`` blocks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgpack
import pytest
import zmq
import zmq.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.edges.bus_pub import BusPublisher
from broker.edges.history import HistoryServer, split_envelope
from broker.edges.stations_zmq import StationsEdge
from common.errors import ConfigError, TransportError
from common.messages import Ack, BusEvent, Heartbeat, Hello, SessionComplete, StationToBroker

pytestmark = pytest.mark.e2e

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


def dealer(ctx: zmq.asyncio.Context, endpoint: str, routing_id: str) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, routing_id.encode())
    sock.connect(endpoint)
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


@asynccontextmanager
async def stations_edge(
    ctx: zmq.asyncio.Context, rec: Recorder, heartbeat_s: float = 5.0, **kw: Any
) -> AsyncIterator[StationsEdge]:
    edge = StationsEdge(
        ctx,
        ANY_PORT,
        heartbeat_s=heartbeat_s,
        on_message=rec.on_message,
        on_unroutable=rec.on_unroutable,
        **kw,
    )
    await edge.start()
    try:
        yield edge
    finally:
        await edge.close()


# --- stations ROUTER ---------------------------------------------------------------------


def test_hello_is_delivered_with_the_routing_id_as_point_id() -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder()
            async with stations_edge(ctx, rec) as edge:
                st_sock = dealer(ctx, edge.endpoint, "CP01")
                await st_sock.send(msgpack.packb(hello("CP01")))
                await st_sock.send(msgpack.packb({"type": "heartbeat"}))
                await st_sock.send(msgpack.packb({"type": "ack", "cmd_id": "c1", "ok": True}))
                await until(lambda: len(rec.messages) == 3)
                (p1, m1), (p2, m2), (p3, m3) = rec.messages
                assert (p1, p2, p3) == ("CP01", "CP01", "CP01")
                assert isinstance(m1, Hello)
                assert m1.id == "CP01" and m1.potencia_kw == 22.0 and m1.boot_id == "b1"
                assert isinstance(m2, Heartbeat)
                assert m3 == Ack(cmd_id="c1", ok=True)
                assert edge.stats["received"] == 3
                assert edge.stats["malformed"] == 0
                assert edge.live_stations == ["CP01"]

    run(body())


def test_session_complete_is_decoded() -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder()
            async with stations_edge(ctx, rec) as edge:
                st_sock = dealer(ctx, edge.endpoint, "CP02")
                msg = {
                    "type": "session_complete",
                    "session_id": "S-1",
                    "vehicle_id": "CAR1",
                    "energia_kwh": 36.0,
                    "nivel_inicial": 20.0,
                    "nivel_final": 80.0,
                    "started_at": 1000.0,
                    "ended_at": 1600.0,
                    "reason": "target_reached",
                }
                await st_sock.send(msgpack.packb(msg))
                await until(lambda: len(rec.messages) == 1)
                point_id, got = rec.messages[0]
                assert point_id == "CP02"
                assert isinstance(got, SessionComplete)
                assert got.session_id == "S-1" and got.energia_kwh == 36.0

    run(body())


def test_malformed_messages_are_counted_and_dropped() -> None:
    bad_frames: list[list[bytes]] = [
        [b"\xc1 not msgpack"],
        [msgpack.packb({"type": "teleport"})],
        [msgpack.packb({"type": "ack", "cmd_id": 5, "ok": "yes"})],
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb({"type": "heartbeat"}), msgpack.packb({"type": "heartbeat"})],
        [msgpack.packb(hello("CP99"))],  # hello naming another point than the routing id
        [b""],
    ]

    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder()
            async with stations_edge(ctx, rec) as edge:
                st_sock = dealer(ctx, edge.endpoint, "CP03")
                for frames in bad_frames:
                    await st_sock.send_multipart(frames)
                await until(lambda: edge.stats["malformed"] == len(bad_frames))
                assert rec.messages == []
                assert edge.stats["received"] == 0
                # the edge is still alive and serves the next good message
                await st_sock.send(msgpack.packb({"type": "heartbeat"}))
                await until(lambda: len(rec.messages) == 1)
                assert rec.messages[0] == ("CP03", Heartbeat())
                assert edge.stats["malformed"] == len(bad_frames)

    run(body())


def test_non_utf8_routing_id_is_malformed() -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder()
            async with stations_edge(ctx, rec) as edge:
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.ROUTING_ID, b"\xff\xfe")
                sock.connect(edge.endpoint)
                await sock.send(msgpack.packb({"type": "heartbeat"}))
                await until(lambda: edge.stats["malformed"] == 1)
                assert rec.messages == []

    run(body())


def test_callback_errors_do_not_stop_the_edge() -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder(fail=True)
            async with stations_edge(ctx, rec) as edge:
                st_sock = dealer(ctx, edge.endpoint, "CP04")
                await st_sock.send(msgpack.packb({"type": "heartbeat"}))
                await st_sock.send(msgpack.packb({"type": "heartbeat"}))
                await until(lambda: len(rec.messages) == 2)
                assert edge.stats["received"] == 2

    run(body())


def test_a_flood_of_station_messages_does_not_starve_the_loop() -> None:
    n = 20_000

    def flood(endpoint: str) -> None:
        with zmq.Context() as sync_ctx, sync_ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 1000)
            sock.setsockopt(zmq.ROUTING_ID, b"CP10")
            sock.connect(endpoint)
            frame = msgpack.packb({"type": "heartbeat"})
            for _ in range(n):
                sock.send(frame)

    async def ticker(gaps: list[float], stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder()
            async with stations_edge(ctx, rec) as edge:
                gaps: list[float] = []
                stop = asyncio.Event()
                tick = asyncio.create_task(ticker(gaps, stop))
                try:
                    sender = asyncio.create_task(asyncio.to_thread(flood, edge.endpoint))
                    await until(lambda: edge.stats["received"] == n, timeout=15)
                    await sender
                finally:
                    stop.set()
                    await tick
                assert len(rec.messages) == n
                assert max(gaps) < 0.5, max(gaps)

    run(body())


@settings(max_examples=300, deadline=None)
@given(routing_id=st.binary(max_size=8), frames=st.lists(st.binary(max_size=64), max_size=3))
def test_any_frames_are_delivered_or_counted_never_raised(
    routing_id: bytes, frames: list[bytes]
) -> None:
    rec = Recorder()
    with zmq.asyncio.Context() as ctx:
        edge = StationsEdge(
            ctx,
            ANY_PORT,
            heartbeat_s=1.0,
            on_message=rec.on_message,
            on_unroutable=rec.on_unroutable,
        )
        edge.handle_frames([routing_id, *frames])
    assert edge.stats["received"] + edge.stats["malformed"] == 1
    assert len(rec.messages) == edge.stats["received"]


def test_send_reaches_the_station_as_one_msgpack_frame() -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder()
            async with stations_edge(ctx, rec) as edge:
                st_sock = dealer(ctx, edge.endpoint, "CP05")
                await st_sock.send(msgpack.packb(hello("CP05")))
                await until(lambda: len(rec.messages) == 1)
                cmd = {"type": "welcome", "heartbeat_s": 1.0}
                edge.send("CP05", cmd)
                assert await recv_map(st_sock) == cmd
                hold = {
                    "type": "hold",
                    "cmd_id": "c9",
                    "reservation_id": "R-1",
                    "vehicle_id": "CAR7",
                    "until": 1234.5,
                }
                edge.send("CP05", hold)
                assert await recv_map(st_sock) == hold
                assert edge.stats["sent"] == 2
                assert rec.unroutable == []

    run(body())


def test_heartbeats_go_to_live_stations_only() -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder()
            async with stations_edge(ctx, rec, heartbeat_s=0.1, live_window_s=0.5) as edge:
                st_sock = dealer(ctx, edge.endpoint, "CP06")
                await st_sock.send(msgpack.packb({"type": "heartbeat"}))
                t0 = time.monotonic()
                got = [await recv_map(st_sock, 1.0) for _ in range(3)]
                assert got == [{"type": "heartbeat"}] * 3
                assert time.monotonic() - t0 < 0.9  # about one every 0.1 s
                # silent for longer than the live window: heartbeats stop
                await asyncio.sleep(0.6)
                while await readable(st_sock, 0):  # drain what was sent meanwhile
                    await st_sock.recv_multipart()
                assert edge.live_stations == []
                assert not await readable(st_sock, 300)
                # heard again: heartbeats resume
                await st_sock.send(msgpack.packb({"type": "heartbeat"}))
                assert await recv_map(st_sock, 1.0) == {"type": "heartbeat"}

    run(body())


def test_heartbeats_reach_every_station_once_per_period_spread_over_it() -> None:
    n, period = 40, 0.3

    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder()
            async with stations_edge(ctx, rec, heartbeat_s=period) as edge:
                socks = [dealer(ctx, edge.endpoint, f"CP{i:03d}") for i in range(n)]
                for sock in socks:
                    await sock.send(msgpack.packb({"type": "heartbeat"}))
                await until(lambda: len(rec.messages) == n)
                arrivals: dict[int, list[float]] = {i: [] for i in range(n)}
                t0 = time.monotonic()
                while time.monotonic() - t0 < 4 * period:
                    for i, sock in enumerate(socks):
                        while await readable(sock, 0):
                            assert await recv_map(sock) == {"type": "heartbeat"}
                            arrivals[i].append(time.monotonic() - t0)
                    await asyncio.sleep(0.005)
                for times in arrivals.values():
                    assert 3 <= len(times) <= 5, times
                    gaps = [b - a for a, b in itertools.pairwise(times)]
                    assert max(gaps) < 2 * period, gaps
                # not one burst: first heartbeats land at several distinct moments
                firsts = sorted(times[0] for times in arrivals.values())
                assert firsts[-1] - firsts[0] > period / 3, firsts

    run(body())


def test_send_to_unknown_station_calls_on_unroutable() -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder()
            async with stations_edge(ctx, rec) as edge:
                edge.send("NOPE", {"type": "release", "cmd_id": "c1", "reservation_id": "R"})
                assert rec.unroutable == ["NOPE"]
                edge.send("\ud800", {"type": "heartbeat"})  # cannot even be a routing id
                assert rec.unroutable == ["NOPE", "\ud800"]
                assert edge.stats["unroutable"] == 2
                assert edge.stats["sent"] == 0

    run(body())


def test_station_that_disconnects_becomes_unroutable() -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder()
            async with stations_edge(ctx, rec, heartbeat_s=0.05) as edge:
                st_sock = dealer(ctx, edge.endpoint, "CP07")
                await st_sock.send(msgpack.packb({"type": "heartbeat"}))
                await recv_map(st_sock)
                st_sock.close(linger=0)
                # the periodic heartbeat finds the peer gone and reports it once
                await until(lambda: rec.unroutable == ["CP07"])
                assert edge.live_stations == []
                await asyncio.sleep(0.2)
                assert rec.unroutable == ["CP07"]

    run(body())


def test_reconnecting_station_takes_over_its_routing_id() -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            rec = Recorder()
            async with stations_edge(ctx, rec) as edge:
                old = dealer(ctx, edge.endpoint, "CP08")
                await old.send(msgpack.packb(hello("CP08")))
                await until(lambda: len(rec.messages) == 1)
                # a new socket with the same id, the old one still open (a hung process)
                new = dealer(ctx, edge.endpoint, "CP08")
                await new.send(msgpack.packb(hello("CP08")))
                await until(lambda: len(rec.messages) == 2)
                edge.send("CP08", {"type": "welcome", "heartbeat_s": 1.0})
                assert await recv_map(new) == {"type": "welcome", "heartbeat_s": 1.0}
                assert not await readable(old, 100)

    run(body())


def test_send_before_start_is_dropped_not_raised() -> None:
    rec = Recorder()
    with zmq.asyncio.Context() as ctx:
        edge = StationsEdge(
            ctx,
            ANY_PORT,
            heartbeat_s=1.0,
            on_message=rec.on_message,
            on_unroutable=rec.on_unroutable,
        )
        edge.send("CP01", {"type": "heartbeat"})
    assert edge.stats["dropped"] == 1
    assert rec.unroutable == []


# --- bus PUB -----------------------------------------------------------------------------


def make_event(seq: int, topic: str) -> BusEvent:
    return BusEvent(seq=seq, ts=1_700_000_000.0 + seq, topic=topic, data={"n": seq, "p": "CP1"})


async def subscribers(
    ctx: zmq.asyncio.Context, pub: BusPublisher, prefix_sets: list[list[str]]
) -> list[zmq.asyncio.Socket]:
    """SUBs that are provably connected: each saw a probe event before this returns."""
    subs = []
    for prefixes in prefix_sets:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        for p in [*prefixes, "probe."]:
            sub.setsockopt(zmq.SUBSCRIBE, p.encode())
        sub.connect(pub.endpoint)
        subs.append(sub)
    deadline = time.monotonic() + WAIT_S
    pending = list(subs)
    while pending:
        assert time.monotonic() < deadline, "subscriber never connected"
        pub.publish(make_event(0, "probe.ping"))
        await asyncio.sleep(0.02)
        pending = [s for s in pending if not await readable(s, 0)]
    for sub in subs:
        sub.setsockopt(zmq.UNSUBSCRIBE, b"probe.")
    await asyncio.sleep(0.1)  # the unsubscriptions reach the publisher
    for sub in subs:
        while await readable(sub, 0):
            await sub.recv_multipart()
    return subs


def test_subscribers_receive_events_in_order_with_both_frames() -> None:
    topics = ["point.registered", "reservation.created", "point.status", "charging.completed"]

    async def body() -> None:
        async with zmq_context() as ctx:
            pub = BusPublisher(ctx, ANY_PORT)
            await pub.start()
            try:
                sub_all, sub_point = await subscribers(ctx, pub, [[""], ["point."]])
                events = [make_event(i + 1, topics[i % len(topics)]) for i in range(200)]
                for e in events:
                    pub.publish(e)
                got = []
                for _ in events:
                    frames = await asyncio.wait_for(sub_all.recv_multipart(), WAIT_S)
                    assert len(frames) == 2
                    payload = msgpack.unpackb(frames[1])
                    assert frames[0].decode() == payload["topic"]
                    got.append(payload)
                assert got == [
                    {"seq": e.seq, "ts": e.ts, "topic": e.topic, "data": e.data} for e in events
                ]
                want_point = [e.seq for e in events if e.topic.startswith("point.")]
                seqs = []
                for _ in want_point:
                    frames = await asyncio.wait_for(sub_point.recv_multipart(), WAIT_S)
                    assert frames[0].startswith(b"point.")
                    seqs.append(msgpack.unpackb(frames[1])["seq"])
                assert seqs == want_point
                assert not await readable(sub_point, 100)
                assert pub.stats["dropped"] == 0
                assert pub.stats["published"] >= len(events)
            finally:
                await pub.close()

    run(body())


def test_publish_never_blocks_without_subscribers_or_after_close() -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            pub = BusPublisher(ctx, ANY_PORT)
            await pub.start()
            t0 = time.monotonic()
            for i in range(5000):
                pub.publish(make_event(i + 1, "point.status"))
            assert time.monotonic() - t0 < 2.0
            assert pub.stats["published"] == 5000
            await pub.close()
            pub.publish(make_event(5001, "point.status"))
            assert pub.stats["dropped"] == 1

    run(body())


# --- history ROUTER ----------------------------------------------------------------------


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


@asynccontextmanager
async def history_server(
    ctx: zmq.asyncio.Context, log: FakeLog, snapshot: Callable[[], dict[str, Any]] | None = None
) -> AsyncIterator[HistoryServer]:
    server = HistoryServer(
        ctx,
        ANY_PORT,
        events_since=log.events_since,
        snapshot=snapshot or log.snapshot,
        accounts=log.accounts,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def ask_dealer(sock: zmq.asyncio.Socket, request: Any) -> dict[str, Any]:
    await sock.send(msgpack.packb(request))
    return await recv_map(sock)


async def ask_req(sock: zmq.asyncio.Socket, request: Any) -> dict[str, Any]:
    await sock.send(msgpack.packb(request))
    frames = await asyncio.wait_for(sock.recv_multipart(), WAIT_S)
    assert len(frames) == 1
    obj = msgpack.unpackb(frames[0])
    assert isinstance(obj, dict)
    return obj


@pytest.mark.parametrize("kind", ["dealer", "req"])
def test_history_since_snapshot_accounts_and_errors(kind: str) -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            log = FakeLog(2500)
            async with history_server(ctx, log) as server:
                sock = ctx.socket(zmq.DEALER if kind == "dealer" else zmq.REQ)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(server.endpoint)
                ask = ask_dealer if kind == "dealer" else ask_req

                r = await ask(sock, {"op": "since", "seq": 10, "limit": 5})
                assert [e["seq"] for e in r["events"]] == [11, 12, 13, 14, 15]
                assert r["events"][0] == {
                    "seq": 11,
                    "ts": 1_700_000_011.0,
                    "topic": "point.status",
                    "data": {"n": 11, "p": "CP1"},
                }
                assert r["last_seq"] == 2500 and r["more"] is True

                r = await ask(sock, {"op": "since", "seq": 0})  # default limit
                assert len(r["events"]) == 1000 and r["more"] is True
                r = await ask(sock, {"op": "since", "seq": 1000, "limit": 5000})  # clamped
                assert [r["events"][0]["seq"], r["events"][-1]["seq"]] == [1001, 2000]
                assert log.calls[-2:] == [(0, 1000), (1000, 1000)]
                r = await ask(sock, {"op": "since", "seq": 2400, "limit": 1000})
                assert len(r["events"]) == 100 and r["last_seq"] == 2500 and r["more"] is False
                r = await ask(sock, {"op": "since", "seq": 2500})
                assert r == {"events": [], "last_seq": 2500, "more": False}

                assert await ask(sock, {"op": "snapshot"}) == log.snapshot()
                assert await ask(sock, {"op": "accounts"}) == {"accounts": log.accounts()}

                for bad in (
                    {"op": "explode"},
                    {"seq": 3},
                    {"op": "since", "seq": -1},
                    {"op": "since", "seq": "x"},
                    {"op": "since", "seq": 0, "limit": 0},
                    [1, 2],
                    "since",
                ):
                    r = await ask(sock, bad)
                    assert set(r) == {"error"}, (bad, r)
                    assert isinstance(r["error"], str) and r["error"]
                r = await ask(sock, {"op": "explode"})
                assert r["error"] == (
                    "unknown op 'explode'; known ops: since, snapshot, accounts, set_availability"
                )
                r = await ask(sock, {"op": "since", "seq": -1})
                assert r["error"].startswith("seq: ")
                # not msgpack at all
                await sock.send(b"\xc1\xc1")
                r = await recv_map(sock)
                assert set(r) == {"error"}
                assert server.stats["errors"] == 10
                # still serving
                r = await ask(sock, {"op": "since", "seq": 2499})
                assert [e["seq"] for e in r["events"]] == [2500]

    run(body())


def test_history_multi_frame_request_and_failing_callback_get_errors() -> None:
    def broken_snapshot() -> dict[str, Any]:
        raise RuntimeError("store gone")

    async def body() -> None:
        async with zmq_context() as ctx:
            log = FakeLog(3)
            async with history_server(ctx, log, snapshot=broken_snapshot) as server:
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(server.endpoint)
                await sock.send_multipart([msgpack.packb({"op": "snapshot"})] * 2)
                r = await recv_map(sock)
                assert "error" in r and "frame" in r["error"]
                r = await ask_dealer(sock, {"op": "snapshot"})
                assert set(r) == {"error"} and "internal" in r["error"]
                # a DEALER that mimics REQ (empty delimiter) gets the same envelope back
                await sock.send_multipart([b"", msgpack.packb({"op": "since", "seq": 2})])
                frames = await asyncio.wait_for(sock.recv_multipart(), WAIT_S)
                assert frames[0] == b"" and len(frames) == 2
                assert [e["seq"] for e in msgpack.unpackb(frames[1])["events"]] == [3]

    run(body())


def test_split_envelope_shapes() -> None:
    assert split_envelope([b"id", b"", b"req"]) == ([b"id", b""], [b"req"])
    assert split_envelope([b"id", b"req"]) == ([b"id"], [b"req"])
    assert split_envelope([b"id", b""]) == ([b"id"], [b""])
    assert split_envelope([b"id"]) == ([b"id"], [])
    assert split_envelope([b"id", b"a", b"b"]) == ([b"id"], [b"a", b"b"])


# --- binding -------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["in use", "tcp://127.0.0.1:notaport", "bogus://x"])
def test_every_edge_reports_an_unbindable_endpoint_as_transport_error(endpoint: str) -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            holder = ctx.socket(zmq.PUB)
            holder.setsockopt(zmq.LINGER, 0)
            holder.bind(ANY_PORT)
            taken = holder.getsockopt(zmq.LAST_ENDPOINT)
            assert isinstance(taken, bytes)
            where = taken.decode() if endpoint == "in use" else endpoint
            rec = Recorder()
            log = FakeLog(1)
            edges: list[StationsEdge | BusPublisher | HistoryServer] = [
                StationsEdge(
                    ctx,
                    where,
                    heartbeat_s=1.0,
                    on_message=rec.on_message,
                    on_unroutable=rec.on_unroutable,
                ),
                BusPublisher(ctx, where),
                HistoryServer(
                    ctx,
                    where,
                    events_since=log.events_since,
                    snapshot=log.snapshot,
                    accounts=log.accounts,
                ),
            ]
            for edge in edges:
                with pytest.raises(TransportError, match="cannot bind"):
                    await edge.start()
                await edge.close()  # nothing to close, and no error
            holder.close(linger=0)

    run(body())


@pytest.mark.parametrize("heartbeat_s", [0.0, -1.0, float("nan")])
def test_a_non_positive_heartbeat_period_is_a_config_error(heartbeat_s: float) -> None:
    rec = Recorder()
    with zmq.asyncio.Context() as ctx, pytest.raises(ConfigError, match="heartbeat_s"):
        StationsEdge(
            ctx,
            ANY_PORT,
            heartbeat_s=heartbeat_s,
            on_message=rec.on_message,
            on_unroutable=rec.on_unroutable,
        )
