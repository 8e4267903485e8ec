"""The stations ROUTER (StationsEdge) with real DEALER sockets on free ports."""

from __future__ import annotations

import asyncio
import itertools
import time

import msgpack
import pytest
import zmq
import zmq.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from zmq.asyncio import Context

from broker.edges.stations_zmq import StationsEdge
from common.errors import ConfigError
from common.messages import Ack, Heartbeat, Hello, Hold, SessionComplete, Welcome
from tests.support.zmq_edges import (
    Recorder,
    dealer,
    greeted,
    hello,
    new_stations_edge,
    readable,
    recv_map,
    run_with_stations_edge,
    stations_edge_test,
    until,
)

pytestmark = pytest.mark.e2e


@stations_edge_test()
async def test_hello_is_delivered_with_the_routing_id_as_point_id(
    ctx: Context, rec: Recorder, edge: StationsEdge
) -> None:
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


@stations_edge_test()
async def test_session_complete_is_decoded(ctx: Context, rec: Recorder, edge: StationsEdge) -> None:
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


def test_malformed_messages_are_counted_and_dropped() -> None:
    bad_frames: list[list[bytes]] = [
        [b"\xc1 not msgpack"],
        [msgpack.packb({"type": "teleport"})],
        [msgpack.packb({"type": "ack", "cmd_id": 5, "ok": "yes"})],
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb({"type": "heartbeat"}), msgpack.packb({"type": "heartbeat"})],
        [b""],
    ]

    async def body(ctx: Context, rec: Recorder, edge: StationsEdge) -> None:
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

    run_with_stations_edge(body)


@stations_edge_test()
async def test_one_connection_carries_many_points_named_in_the_messages(
    ctx: Context, rec: Recorder, edge: StationsEdge
) -> None:
    gw = dealer(ctx, edge.endpoint, b"gateway-7f3a")  # a routing id that is no point id
    for point_id in ("GW-1", "GW-2"):
        await gw.send(msgpack.packb(hello(point_id)))
    await until(lambda: len(rec.messages) == 2)
    assert edge.route_of("GW-1") == edge.route_of("GW-2") == b"gateway-7f3a"
    # commands name their point; the first protocol's bytes are kept otherwise
    edge.send("GW-2", Hold(cmd_id="c1", reservation_id="R-1", vehicle_id="CAR1", until=5.0))
    assert await recv_map(gw) == {
        "type": "hold", "cmd_id": "c1", "reservation_id": "R-1", "vehicle_id": "CAR1",
        "until": 5.0, "id": "GW-2",
    }  # fmt: skip
    await gw.send(msgpack.packb({"type": "ack", "cmd_id": "c1", "ok": True, "id": "GW-2"}))
    await until(lambda: len(rec.messages) == 3)
    assert rec.messages[-1] == ("GW-2", Ack(cmd_id="c1", ok=True, id="GW-2"))
    # without a point named, a message of a many-point connection is ambiguous: dropped
    await gw.send(msgpack.packb({"type": "ack", "cmd_id": "c2", "ok": True}))
    await until(lambda: edge.stats["malformed"] == 1)
    assert len(rec.messages) == 3
    # a point said hello for on a new connection moves there
    other = dealer(ctx, edge.endpoint, b"gateway-9b1c")
    await other.send(msgpack.packb(hello("GW-1")))
    await until(lambda: edge.route_of("GW-1") == b"gateway-9b1c")
    assert edge.route_of("GW-2") == b"gateway-7f3a"


@stations_edge_test()
async def test_a_legacy_station_gets_the_original_bytes(
    ctx: Context, rec: Recorder, edge: StationsEdge
) -> None:
    st_sock = await greeted(ctx, edge, rec, "CP11")
    edge.send("CP11", Welcome(heartbeat_s=1.0))
    assert await recv_map(st_sock) == {"type": "welcome", "heartbeat_s": 1.0}


@stations_edge_test()
async def test_non_utf8_routing_id_is_malformed(
    ctx: Context, rec: Recorder, edge: StationsEdge
) -> None:
    sock = dealer(ctx, edge.endpoint, b"\xff\xfe")  # not UTF-8
    await sock.send(msgpack.packb({"type": "heartbeat"}))
    await until(lambda: edge.stats["malformed"] == 1)
    assert rec.messages == []


def test_callback_errors_do_not_stop_the_edge() -> None:
    async def body(ctx: Context, rec: Recorder, edge: StationsEdge) -> None:
        st_sock = dealer(ctx, edge.endpoint, "CP04")
        await st_sock.send(msgpack.packb({"type": "heartbeat"}))
        await st_sock.send(msgpack.packb({"type": "heartbeat"}))
        await until(lambda: len(rec.messages) == 2)
        assert edge.stats["received"] == 2

    run_with_stations_edge(body, Recorder(fail=True))


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
        # CPU time of the loop's thread between ticks: the work the loop did before it
        # came back to this task; wall time would also count other programs of a loaded
        # machine (and the flooding thread holding the GIL)
        last = time.thread_time()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.thread_time()
            gaps.append(now - last)
            last = now

    async def body(ctx: Context, rec: Recorder, edge: StationsEdge) -> None:
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
        # the flood was handled in slices (batches with a yield between them),
        # not in one go (which makes one slice hold nearly all the loop's work: 0.9
        # and more of it); one slice may hold a garbage collection on top of its batch
        assert max(gaps) < 0.75 * sum(gaps), (max(gaps), sum(gaps), len(gaps))

    run_with_stations_edge(body)


@settings(max_examples=300, deadline=None)
@given(routing_id=st.binary(max_size=8), frames=st.lists(st.binary(max_size=64), max_size=3))
def test_any_frames_are_delivered_or_counted_never_raised(
    routing_id: bytes, frames: list[bytes]
) -> None:
    rec = Recorder()
    with zmq.asyncio.Context() as ctx:
        edge = new_stations_edge(ctx, rec, heartbeat_s=1.0)
        edge.handle_frames([routing_id, *frames])
    assert edge.stats["received"] + edge.stats["malformed"] == 1
    assert len(rec.messages) == edge.stats["received"]


@stations_edge_test()
async def test_send_reaches_the_station_as_one_msgpack_frame(
    ctx: Context, rec: Recorder, edge: StationsEdge
) -> None:
    st_sock = await greeted(ctx, edge, rec, "CP05")
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


@stations_edge_test(heartbeat_s=0.1, live_window_s=0.5)
async def test_heartbeats_go_to_live_stations_only(
    ctx: Context, rec: Recorder, edge: StationsEdge
) -> None:
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


def test_heartbeats_reach_every_station_once_per_period_spread_over_it() -> None:
    n, period = 40, 0.3

    async def body(ctx: Context, rec: Recorder, edge: StationsEdge) -> None:
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

    run_with_stations_edge(body, heartbeat_s=period)


@stations_edge_test()
async def test_send_to_unknown_station_calls_on_unroutable(
    ctx: Context, rec: Recorder, edge: StationsEdge
) -> None:
    edge.send("NOPE", {"type": "release", "cmd_id": "c1", "reservation_id": "R"})
    assert rec.unroutable == ["NOPE"]
    edge.send("\ud800", {"type": "heartbeat"})  # cannot even be a routing id
    assert rec.unroutable == ["NOPE", "\ud800"]
    assert edge.stats["unroutable"] == 2
    assert edge.stats["sent"] == 0


@stations_edge_test(heartbeat_s=0.05)
async def test_station_that_disconnects_becomes_unroutable(
    ctx: Context, rec: Recorder, edge: StationsEdge
) -> None:
    st_sock = dealer(ctx, edge.endpoint, "CP07")
    await st_sock.send(msgpack.packb({"type": "heartbeat"}))
    await recv_map(st_sock)
    st_sock.close(linger=0)
    # the periodic heartbeat finds the peer gone and reports it once
    await until(lambda: rec.unroutable == ["CP07"])
    assert edge.live_stations == []
    await asyncio.sleep(0.2)
    assert rec.unroutable == ["CP07"]


@stations_edge_test()
async def test_reconnecting_station_takes_over_its_routing_id(
    ctx: Context, rec: Recorder, edge: StationsEdge
) -> None:
    old = await greeted(ctx, edge, rec, "CP08")
    # a new socket with the same id, the old one still open (a hung process)
    new = await greeted(ctx, edge, rec, "CP08")
    edge.send("CP08", {"type": "welcome", "heartbeat_s": 1.0})
    assert await recv_map(new) == {"type": "welcome", "heartbeat_s": 1.0}
    assert not await readable(old, 100)


def test_send_before_start_is_dropped_not_raised() -> None:
    rec = Recorder()
    with zmq.asyncio.Context() as ctx:
        edge = new_stations_edge(ctx, rec, heartbeat_s=1.0)
        edge.send("CP01", {"type": "heartbeat"})
    assert edge.stats["dropped"] == 1
    assert rec.unroutable == []


@pytest.mark.parametrize("heartbeat_s", [0.0, -1.0, float("nan")])
def test_a_non_positive_heartbeat_period_is_a_config_error(heartbeat_s: float) -> None:
    rec = Recorder()
    with zmq.asyncio.Context() as ctx, pytest.raises(ConfigError, match="heartbeat_s"):
        new_stations_edge(ctx, rec, heartbeat_s=heartbeat_s)
