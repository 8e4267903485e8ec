"""The bus PUB (BusPublisher) with real SUB sockets on free ports."""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest
import zmq
import zmq.asyncio

from broker.edges.bus_pub import BusPublisher
from tests.support.zmq_edges import (
    ANY_PORT,
    WAIT_S,
    make_event,
    readable,
    run,
    zmq_context,
)

pytestmark = pytest.mark.e2e


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
