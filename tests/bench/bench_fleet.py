"""Benchmark: a 10,000-station ``ev-station fleet`` at a 2 s interval for ~10 s.

The fleet runs as a real process. The benchmark plays the broker's two sockets:
a UDP sink (a thread here) that counts datagrams, and, in a child process of
its own so that it keeps up, a ZeroMQ ROUTER that answers every ``hello`` with
``welcome`` and sends each welcomed station a heartbeat every second (as the
broker does, so the stations never see a silent broker).

Reported: time to ready, stations welcomed, datagrams/s received, ZeroMQ frames
per second from the fleet, the fleet's CPU use (user + system, from /proc) as a
share of one core, its resident memory, and how fast it stops on SIGTERM.

Run with ``python -m tests.bench.bench_fleet`` (or ``make bench``); env
``BENCH_FLEET_COUNT`` and ``BENCH_FLEET_SECONDS`` change the size and duration,
``BENCH_FLEET_BACKLOG`` the sink ROUTER's listen backlog (libzmq default 100).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from tests.support.procs import start

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def zmq_sink(out: Queue[Any], stop: Event, backlog: int) -> None:
    """Child process: ROUTER that welcomes hellos and heartbeats welcomed stations."""
    import msgpack
    import zmq

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.SNDHWM, 100_000)
    router.setsockopt(zmq.RCVHWM, 100_000)
    router.setsockopt(zmq.BACKLOG, backlog)
    out.put(router.bind_to_random_port("tcp://127.0.0.1"))
    welcome = msgpack.packb({"type": "welcome", "heartbeat_s": 1.0})
    heartbeat = msgpack.packb({"type": "heartbeat"})
    stations: set[bytes] = set()
    frames_in = 0
    timeline: list[tuple[float, int]] = []
    next_beat = time.monotonic() + 1.0
    while not stop.is_set():
        if router.poll(50):
            while True:
                try:
                    ident, frame = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                frames_in += 1
                if b"hello" in frame and ident not in stations:
                    stations.add(ident)
                    router.send_multipart([ident, welcome], zmq.NOBLOCK)
        now = time.monotonic()
        if now >= next_beat:
            next_beat += 1.0
            timeline.append((time.time(), len(stations)))
            for ident in stations:
                with contextlib.suppress(zmq.ZMQError):
                    router.send_multipart([ident, heartbeat], zmq.NOBLOCK)
            out.put(("frames_in", frames_in))
    out.put(("done", frames_in, len(stations), timeline))
    router.close(linger=0)
    ctx.term()


class UdpSink:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.datagrams = 0
        self.stop = threading.Event()

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.sock.recv(65536)
            except TimeoutError:
                continue
            self.datagrams += 1


def main() -> None:
    count = int(os.environ.get("BENCH_FLEET_COUNT", "10000"))
    seconds = float(os.environ.get("BENCH_FLEET_SECONDS", "10"))
    backlog = int(os.environ.get("BENCH_FLEET_BACKLOG", "100"))
    mpc = mp.get_context("spawn")
    out: Queue[Any] = mpc.Queue()
    stop = mpc.Event()
    child = mpc.Process(target=zmq_sink, args=(out, stop, backlog), daemon=True)
    child.start()
    station_port = int(out.get(timeout=30))
    udp = UdpSink()
    reader = threading.Thread(target=udp.loop)
    reader.start()
    args = ["python", "-m", "station", "fleet", "--count", str(count), "--interval", "2",
            "--status-port", str(udp.port), "--station-port", str(station_port),
            "--report-every", "5", "--log-level", "warning"]  # fmt: skip
    t0 = time.time()
    proc = start(args)
    try:
        proc.read_until("fleet ready", timeout=60)
        ready_s = time.time() - t0
        cpu0, d0, w0 = cpu_s(proc.pid), udp.datagrams, time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - w0
        cpu = cpu_s(proc.pid) - cpu0
        dgs = udp.datagrams - d0
        rss = rss_mb(proc.pid)
        own = proc.read_until("fleet:", timeout=6)
    finally:
        t_stop = time.monotonic()
        rc = proc.stop()
        stop_s = time.monotonic() - t_stop
        stop.set()
        udp.stop.set()
        reader.join(timeout=5)
        udp.sock.close()
    frames_in, welcomed, timeline = 0, 0, []
    while True:
        item = out.get(timeout=30)
        if item[0] == "done":
            _, frames_in, welcomed, timeline = item
            break
    child.join(timeout=10)
    first = next((t - t0 for t, n in timeline if n >= count * 0.9), float("nan"))
    every = next((t - t0 for t, n in timeline if n >= count), float("nan"))
    print(f"fleet of {count} stations, interval 2 s, measured over {wall:.1f} s")
    print(f"  start to ready line:      {ready_s:8.2f} s")
    print(
        f"  stations welcomed:        {welcomed:8d}  (90% after {first:.1f} s, all {every:.1f} s)"
    )
    print(f"  datagrams received:       {dgs / wall:8.0f} /s  (target {count / 2:.0f} /s)")
    print(f"  zmq frames from fleet:    {frames_in:8d}  in all (hellos, heartbeats)")
    print(f"  fleet CPU (user+sys):     {100 * cpu / wall:8.1f} % of one core")
    print(f"  fleet resident memory:    {rss:8.1f} MB")
    print(f"  fleet's own figures:      {own}")
    print(f"  fleet exit code:          {rc} (stopped {stop_s:.2f} s after SIGTERM)", flush=True)


if __name__ == "__main__":
    main()
