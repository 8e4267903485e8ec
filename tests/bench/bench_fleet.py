"""Benchmark: a 10,000-station ``ev-station fleet`` at a 2 s interval for ~10 s.

The fleet runs as a real process. This process plays the broker's two sockets:
a UDP sink that counts datagrams, and a ZeroMQ ROUTER that answers every
``hello`` with ``welcome`` and sends each known station a heartbeat every
second (as the broker does, so the stations never see a silent broker).
Reported: time to ready and to all hellos, datagrams/s received, ZeroMQ frames
in and out, the fleet's CPU use (user + system, from /proc) as a share of one
core, and its resident memory.

Run with ``python -m tests.bench.bench_fleet`` (or ``make bench``); env
``BENCH_FLEET_COUNT`` and ``BENCH_FLEET_SECONDS`` change the size and duration.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import zmq

from tests.support.procs import start

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sink:
    """UDP datagram counter and a ROUTER that welcomes and heartbeats stations."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.SNDHWM, 100_000)
        self.router.setsockopt(zmq.RCVHWM, 100_000)
        self.router.setsockopt(zmq.BACKLOG, int(os.environ.get("BENCH_FLEET_BACKLOG", "100")))
        self.station_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.status_port = int(self.udp.getsockname()[1])
        self.datagrams = 0
        self.frames_in = 0
        self.frames_out = 0
        self.stations: set[bytes] = set()
        self.hellos = 0
        self.all_hellos_at: float | None = None
        self.expected = 0
        self.stop = threading.Event()

    def udp_loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.udp.recv(65536)
            except TimeoutError:
                continue
            self.datagrams += 1

    def zmq_loop(self) -> None:
        import msgpack

        welcome = msgpack.packb({"type": "welcome", "heartbeat_s": 1.0})
        heartbeat = msgpack.packb({"type": "heartbeat"})
        next_beat = time.monotonic() + 1.0
        while not self.stop.is_set():
            if self.router.poll(50):
                while True:
                    try:
                        ident, frame = self.router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.frames_in += 1
                    if msgpack.unpackb(frame).get("type") == "hello":
                        self.hellos += 1
                        self.stations.add(ident)
                        self.router.send_multipart([ident, welcome])
                        self.frames_out += 1
                        if len(self.stations) == self.expected and self.all_hellos_at is None:
                            self.all_hellos_at = time.monotonic()
            if time.monotonic() >= next_beat:
                next_beat += 1.0
                for ident in self.stations:
                    self.router.send_multipart([ident, heartbeat], zmq.NOBLOCK)
                    self.frames_out += 1

    def close(self) -> None:
        self.router.close(linger=0)
        self.ctx.term()
        self.udp.close()


def main() -> None:
    count = int(os.environ.get("BENCH_FLEET_COUNT", "10000"))
    seconds = float(os.environ.get("BENCH_FLEET_SECONDS", "10"))
    sink = Sink()
    sink.expected = count
    threads = [threading.Thread(target=sink.udp_loop), threading.Thread(target=sink.zmq_loop)]
    for t in threads:
        t.start()
    args = ["python", "-m", "station", "fleet", "--count", str(count), "--interval", "2",
            "--status-port", str(sink.status_port), "--station-port", str(sink.station_port),
            "--report-every", "5", "--log-level", "warning"]  # fmt: skip
    t0 = time.monotonic()
    proc = start(args)
    try:
        proc.read_until("fleet ready", timeout=60)
        ready_s = time.monotonic() - t0
        cpu0, d0, i0 = _cpu_s(proc.pid), sink.datagrams, sink.frames_in
        w0 = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - w0
        cpu = _cpu_s(proc.pid) - cpu0
        dgs = sink.datagrams - d0
        frames = sink.frames_in - i0
        rss = _rss_mb(proc.pid)
        lines = [ln for ln in proc.lines if ln.startswith("fleet:")]
        proc.read_until("fleet:", timeout=6)
        lines = [ln for ln in proc.lines if ln.startswith("fleet:")]
    finally:
        t_stop = time.monotonic()
        rc = proc.stop()
        stop_s = time.monotonic() - t_stop
        sink.stop.set()
        for t in threads:
            t.join(timeout=5)
        sink.close()
    hello_s = (sink.all_hellos_at - t0) if sink.all_hellos_at is not None else float("nan")
    print(f"fleet of {count} stations, interval 2 s, measured over {wall:.1f} s")
    print(f"  start to ready line:      {ready_s:8.2f} s")
    print(
        f"  start to all hellos:      {hello_s:8.2f} s  ({len(sink.stations)} stations said hello)"
    )
    print(f"  datagrams received:       {dgs / wall:8.0f} /s  (target {count / 2:.0f} /s)")
    print(f"  zmq frames from fleet:    {frames / wall:8.0f} /s  (heartbeats, hellos)")
    print(f"  fleet CPU (user+sys):     {100 * cpu / wall:8.1f} % of one core")
    print(f"  fleet resident memory:    {rss:8.1f} MB")
    print(f"  fleet's own figures:      {lines[-1] if lines else '-'}")
    print(f"  fleet exit code:          {rc} (stopped {stop_s:.2f} s after SIGTERM)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
