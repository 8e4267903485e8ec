"""Throughput of the broker's ZeroMQ edges, in-process over real tcp sockets on 127.0.0.1.

Figures: station messages received and decoded per second, commands sent per
second, bus events published (and received by one subscriber) per second,
history ``since`` latency for a page of 1000 events, and the cost of one
heartbeat round over many connected stations. The peers run in a thread with
a plain (blocking) zmq context, so the edge's event loop only does its own work.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from broker.edges.bus_pub import BusPublisher
from broker.edges.history import HistoryServer
from broker.edges.stations_zmq import StationsEdge
from common.messages import BusEvent, StationToBroker

ANY_PORT = "tcp://127.0.0.1:*"
MESSAGES = 50_000
EVENTS = 50_000
HISTORY_REQUESTS = 200
FLEET = 500


def _stations_edge(ctx: zmq.asyncio.Context, got: list[StationToBroker]) -> StationsEdge:
    return StationsEdge(
        ctx,
        ANY_PORT,
        heartbeat_s=3600.0,
        on_message=lambda _p, m: got.append(m),
        on_unroutable=lambda _p: None,
    )


async def bench_station_receive(ctx: zmq.asyncio.Context) -> None:
    got: list[StationToBroker] = []
    edge = _stations_edge(ctx, got)
    await edge.start()
    frame = msgpack.packb({"type": "ack", "cmd_id": "cmd-1", "ok": True})

    def station() -> None:
        with zmq.Context() as c, c.socket(zmq.DEALER) as s:
            s.setsockopt(zmq.ROUTING_ID, b"CP0001")
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.LINGER, 5000)
            s.connect(edge.endpoint)
            for _ in range(MESSAGES):
                s.send(frame)

    t0 = time.perf_counter()
    sender = asyncio.create_task(asyncio.to_thread(station))
    while len(got) < MESSAGES:
        await asyncio.sleep(0.001)
    dt = time.perf_counter() - t0
    await sender
    await edge.close()
    print(f"stations ROUTER receive+decode : {MESSAGES / dt:>10,.0f} msg/s")


async def bench_station_send(ctx: zmq.asyncio.Context) -> None:
    got: list[StationToBroker] = []
    edge = _stations_edge(ctx, got)
    await edge.start()
    ready = threading.Event()
    received = 0

    def station() -> None:
        nonlocal received
        with zmq.Context() as c, c.socket(zmq.DEALER) as s:
            s.setsockopt(zmq.ROUTING_ID, b"CP0002")
            s.setsockopt(zmq.RCVHWM, 0)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(edge.endpoint)
            s.send(msgpack.packb({"type": "heartbeat"}))
            ready.set()
            while received < MESSAGES and s.poll(5000):
                s.recv()
                received += 1

    reader = asyncio.create_task(asyncio.to_thread(station))
    await asyncio.to_thread(ready.wait, 5)
    while not got:
        await asyncio.sleep(0.001)
    hold: dict[str, Any] = {
        "type": "hold",
        "cmd_id": "cmd-1",
        "reservation_id": "res-1",
        "vehicle_id": "CAR1",
        "until": 1.0,
    }
    t0 = time.perf_counter()
    sent = 0
    while sent < MESSAGES:
        if sent - received < 400:  # stay under the per-station queue limit
            edge.send("CP0002", hold)
            sent += 1
        else:
            await asyncio.sleep(0)
    await reader
    dt = time.perf_counter() - t0
    await edge.close()
    print(
        f"stations ROUTER send           : {MESSAGES / dt:>10,.0f} msg/s "
        f"(dropped {edge.stats['dropped']})"
    )


async def bench_heartbeat_round(ctx: zmq.asyncio.Context) -> None:
    got: list[StationToBroker] = []
    edge = _stations_edge(ctx, got)
    await edge.start()
    c: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socks = []
    try:
        for i in range(FLEET):
            s = c.socket(zmq.DEALER)
            s.setsockopt(zmq.ROUTING_ID, f"CP{i:04d}".encode())
            s.setsockopt(zmq.LINGER, 0)
            s.connect(edge.endpoint)
            s.send(msgpack.packb({"type": "heartbeat"}))
            socks.append(s)
        while len(got) < FLEET:
            await asyncio.sleep(0.005)
        t0 = time.perf_counter()
        sent = edge.send_heartbeats()
        dt = time.perf_counter() - t0
        print(f"heartbeat round, {sent} stations : {dt * 1000:>10.2f} ms")
    finally:
        for s in socks:
            s.close(linger=0)
        c.term()
        await edge.close()


async def bench_bus(ctx: zmq.asyncio.Context) -> None:
    pub = BusPublisher(ctx, ANY_PORT)
    await pub.start()
    received = 0
    ready = threading.Event()

    def subscriber() -> None:
        nonlocal received
        with zmq.Context() as c, c.socket(zmq.SUB) as s:
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVHWM, 0)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(pub.endpoint)
            ready.set()
            while s.poll(2000):
                frames = s.recv_multipart()
                if frames[0] == b"bench.event":
                    received += 1
                    if received == EVENTS:
                        return

    reader = asyncio.create_task(asyncio.to_thread(subscriber))
    await asyncio.to_thread(ready.wait, 5)
    probe = BusEvent(0, 0.0, "bench.probe", {})
    deadline = time.monotonic() + 5
    while pub.stats["published"] < 50 and time.monotonic() < deadline:
        pub.publish(probe)  # let the subscription reach the publisher
        await asyncio.sleep(0.01)
    events = [
        BusEvent(i, time.time(), "bench.event", {"point_id": "CP0001", "estado": "carregando"})
        for i in range(1, EVENTS + 1)
    ]
    t0 = time.perf_counter()
    for e in events:
        pub.publish(e)
    dt_pub = time.perf_counter() - t0
    await reader
    dt_all = time.perf_counter() - t0
    await pub.close()
    print(f"bus PUB publish                 : {EVENTS / dt_pub:>10,.0f} events/s")
    print(
        f"bus PUB -> one SUB delivered    : {received / dt_all:>10,.0f} events/s "
        f"({received}/{EVENTS})"
    )


async def bench_history(ctx: zmq.asyncio.Context) -> None:
    log = [
        BusEvent(i, 1_700_000_000.0 + i, "point.status", {"point_id": "CP0001", "estado": "x"})
        for i in range(1, 5001)
    ]

    def since(seq: int, limit: int) -> tuple[list[BusEvent], int, bool]:
        page = log[seq : seq + limit]
        return page, len(log), seq + limit < len(log)

    server = HistoryServer(ctx, ANY_PORT, events_since=since, snapshot=dict, accounts=dict)
    await server.start()
    request = msgpack.packb({"op": "since", "seq": 0, "limit": 1000})

    def client() -> float:
        with zmq.Context() as c, c.socket(zmq.REQ) as s:
            s.setsockopt(zmq.LINGER, 0)
            s.connect(server.endpoint)
            t0 = time.perf_counter()
            for _ in range(HISTORY_REQUESTS):
                s.send(request)
                assert s.poll(5000)
                s.recv()
            return time.perf_counter() - t0

    dt = await asyncio.to_thread(client)
    await server.close()
    print(f"history since, 1000 events      : {dt / HISTORY_REQUESTS * 1000:>10.2f} ms/request")


async def run_all() -> None:
    ctx = zmq.asyncio.Context()
    try:
        await bench_station_receive(ctx)
        await bench_station_send(ctx)
        await bench_heartbeat_round(ctx)
        await bench_bus(ctx)
        await bench_history(ctx)
    finally:
        ctx.destroy(linger=0)


def main() -> None:
    asyncio.run(run_all())


if __name__ == "__main__":
    main()
