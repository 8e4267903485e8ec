"""Benchmark of the load generator (``ev-vehicle swarm``) itself, and of the broker under it.

1. The swarm's own ceiling: it runs against a trivial echo server (a separate
   uvloop process that writes every request line straight back, so the id
   still matches). Whatever rate it reaches there is the most it can offer a
   broker; the broker figures below are meaningful only while they stay
   under it.
2. The real broker (``python -m broker serve`` on free ports, 20 points
   registered by UDP datagrams) under the realistic mix.

Run: ``python -m tests.bench.bench_swarm`` (or ``make bench``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from typing import Any

from tests.support.procs import Proc, broker_ports, start, start_broker
from vehicle.swarm import SwarmConfig, run_swarm

DURATION_S = 3.0


def serve_echo() -> None:
    """The echo server: every complete line goes straight back; prints ``ready PORT``."""
    import uvloop

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            cut = buf.rfind(b"\n") + 1
            if cut:
                self.transport.write(buf[:cut])
            self.buf = buf[cut:]

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0, backlog=4096)
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(run())


def _run(cfg: SwarmConfig) -> dict[str, Any]:
    import uvloop

    return uvloop.run(run_swarm(cfg)).to_dict()


def _report(name: str, r: dict[str, Any]) -> None:
    lat = r["latency_ms"]
    errors = sum(r["errors"].values())
    print(
        f"{name:<46} {r['throughput_rps']:>10,.0f} req/s   p50 {lat['p50']:7.2f} ms   "
        f"p90 {lat['p90']:7.2f}   p99 {lat['p99']:7.2f}   max {lat['max']:8.2f}   "
        f"errors {errors}   refused {sum(r['refused'].values())}"
    )


def bench_echo() -> None:
    proc: Proc = start(["python", "-m", "tests.bench.bench_swarm", "echo"])
    try:
        port = int(proc.read_until("ready", timeout=10).split()[1])
        for count, pipeline, mix in (
            (1, 1, "ping"),
            (50, 1, "ping"),
            (50, 16, "ping"),
            (500, 1, "realistic"),
            (50, 16, "realistic"),
        ):
            cfg = SwarmConfig("127.0.0.1", port, count=count, duration=DURATION_S,
                              pipeline=pipeline, mix=mix, seed=1)  # fmt: skip
            _report(f"echo: {count} vehicles x {pipeline} in flight, {mix}", _run(cfg))
    finally:
        proc.stop()


def bench_broker() -> None:
    ports = broker_ports()
    try:
        proc = start_broker(ports, ":memory:")
    except (TimeoutError, OSError) as exc:
        print(f"broker: not started ({str(exc).splitlines()[0]})")
        return
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for i in range(20):
                datagram = {
                    "id": f"BP{i:02d}",
                    "latitude": -12.97 + i * 0.01,
                    "longitude": -38.50 + i * 0.01,
                    "available": True,
                    "queue_size": 0,
                }
                udp.sendto(json.dumps(datagram).encode(), (ports.host, ports.status))
        time.sleep(0.3)
        for count, pipeline, mix in ((50, 1, "realistic"), (50, 8, "consulta"), (50, 8, "ping")):
            cfg = SwarmConfig(ports.host, ports.vehicle, count=count, duration=DURATION_S,
                              pipeline=pipeline, mix=mix, seed=2, radius_km=30)  # fmt: skip
            _report(f"broker: {count} vehicles x {pipeline} in flight, {mix}", _run(cfg))
    finally:
        proc.stop()


def main() -> None:
    print(f"swarm benchmark ({DURATION_S:g} s per line)")
    bench_echo()
    bench_broker()


if __name__ == "__main__":
    if sys.argv[1:2] == ["echo"]:
        serve_echo()
    else:
        main()
