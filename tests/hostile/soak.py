"""``make soak``: mixed legitimate and hostile traffic against one live broker, bounded in time.

    python -m tests.hostile.soak [--minutes 30] [--workers 2] [--swarm 100]

* Legitimate: ``ev-vehicle swarm`` (realistic mix, ``--register``, open loop at
  ``--rate`` requests/s, so the broker is not saturated by legitimate load) in its
  own process for the whole run, plus the confirmed reservations and bill of
  :class:`~tests.hostile.live.Ledger`.
* Hostile: worker threads send generated documents (:class:`~tests.hostile.inputs.Generator`)
  in batches, each batch on a fresh connection and closed by a numbered ping
  whose pong must come back; every 30 s a phase of floods from clients that
  never read and of slow readers.
* Every 30 s: the broker must be alive, answer ``ping`` within 100 ms (best of
  3) and keep its RSS bounded. At the end: kill -9, restart, and every
  confirmed reservation and bill must be there.

Prints the figures (inputs tried, crashes, ``internal`` replies, worst ping,
RSS, swarm throughput and p99) and exits 1 if any check failed. Only loopback
addresses are used; every loop is bounded by the duration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.hostile import live
from tests.hostile.inputs import Generator
from tests.hostile.live import HERE, POINTS, Ledger, LiveBroker, ping_ms, rss_kib
from tests.support.procs import ROOT, broker_ports
from tests.support.raw_clients import HOST, LAT, LON, FakeStation, keepalive, zmq_ctx

BATCH = 50
PHASE_S = 30.0
PING_LIMIT_MS = 100.0


@dataclass
class Tally:
    inputs: int = 0
    batches: int = 0
    closed_by_broker: int = 0
    internal: int = 0
    lost: int = 0  # a batch whose closing pong never came back (a hang)
    samples: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def fuzz_worker(port: int, seed: int, stop: threading.Event, tally: Tally) -> None:
    gen = Generator(seed)
    while not stop.is_set():
        docs = [gen.document() for _ in range(BATCH)]
        payload = b"\n".join(docs) + b'\n{"type":"ping","data":{},"id":"end"}\n'
        outcome = _send_batch(port, payload)
        with tally.lock:
            tally.inputs += len(docs)
            tally.batches += 1
            if outcome == "closed":
                tally.closed_by_broker += 1
            elif outcome == "lost":
                tally.lost += 1
            elif outcome == "internal":
                tally.internal += 1
                if len(tally.samples) < 5:
                    tally.samples.append(payload[:500])


def _send_batch(port: int, payload: bytes) -> str:
    try:
        with socket.create_connection((HOST, port), timeout=20) as s:
            sender = threading.Thread(target=_send_all, args=(s, payload), daemon=True)
            sender.start()
            buf = b""
            internal = False
            while True:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    return "closed"
                except TimeoutError:
                    return "lost"
                if not chunk:
                    return "closed"
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if b'"code":"internal"' in line:
                        internal = True
                    if line.endswith(b'"id":"end"}') and line.startswith(b'{"type":"pong"'):
                        return "internal" if internal else "ok"
    except OSError:
        return "closed"


def _send_all(s: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(OSError):
        s.sendall(payload)


def flood_phase(port: int, seconds: float) -> None:
    """Clients that write tiny objects and never read, and slow readers of big replies."""
    with live.clogged_clients(port, 4) as socks:
        flood = b"{}" * 32768
        listing = json.dumps({"type": "consulta", "data": {"localizacao": HERE}}).encode() + b"\n"
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for i, s in enumerate(socks):
                with contextlib.suppress(BlockingIOError, OSError):
                    s.send(flood if i % 2 == 0 else listing * 20)
                if i % 2:
                    with contextlib.suppress(BlockingIOError, OSError):
                        s.recv(256)
            time.sleep(0.01)


def run(minutes: float, workers: int, swarm: int, rate: int) -> int:
    folder = Path(tempfile.mkdtemp(prefix="evcharge-soak-"))
    ports = broker_ports()
    broker = LiveBroker(ports, folder, "--offline-after", "3", "--hold-minutes", "600")
    tally = Tally()
    failures: list[str] = []
    worst_ping = 0.0
    max_rss = 0
    swarm_out: dict[str, Any] = {}
    duration = minutes * 60.0
    broker.start()
    ledger = Ledger()
    started = time.monotonic()
    try:
        with zmq_ctx() as ctx, keepalive(ports.status, *POINTS, every=0.5):
            station = FakeStation(ctx, ports.station, "HP03", status_port=ports.status)
            try:
                station.greet()
                ledger.create(ports, station)
            finally:
                station.close()
            rss_start = rss_kib(broker.pid)
            swarm_proc = subprocess.Popen(
                [sys.executable, "-m", "vehicle", "--port", str(ports.vehicle), "--json",
                 "swarm", "--count", str(swarm), "--duration", f"{duration:.0f}",
                 "--rate", str(rate),
                 "--center", f"{LAT},{LON}", "--radius-km", "5", "--register"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
            )  # fmt: skip
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=fuzz_worker, args=(ports.vehicle, 1000 + i, stop, tally), daemon=True
                )
                for i in range(workers)
            ]
            for t in threads:
                t.start()
            try:
                while time.monotonic() - started < duration:
                    flood_phase(ports.vehicle, min(5.0, PHASE_S / 3))
                    time.sleep(max(0.0, min(PHASE_S, duration - (time.monotonic() - started))))
                    if not broker.alive():
                        failures.append("the broker died")
                        break
                    ms = ping_ms(ports.vehicle)
                    worst_ping = max(worst_ping, ms)
                    rss = rss_kib(broker.pid)
                    max_rss = max(max_rss, rss)
                    print(
                        f"[soak] {time.monotonic() - started:6.0f} s  inputs {tally.inputs:,}  "
                        f"ping {ms:.1f} ms  rss {rss // 1024} MiB",
                        flush=True,
                    )
                    if ms >= PING_LIMIT_MS:
                        failures.append(f"ping took {ms:.1f} ms")
                    if rss - rss_start > 300 * 1024:
                        failures.append(f"RSS grew to {rss // 1024} MiB")
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
                out, _ = swarm_proc.communicate(timeout=120)
                with contextlib.suppress(ValueError):
                    swarm_out = json.loads(out or b"{}")
            ledger.release()
            if broker.alive():
                broker.kill9_and_restart()
                try:
                    ledger.verify(ports)
                except AssertionError as exc:
                    failures.append(f"lost after kill -9: {exc}")
            if "Traceback" in broker.log():
                failures.append("a traceback in the broker log")
    finally:
        broker.stop()
    elapsed = time.monotonic() - started
    crashes = int("the broker died" in failures) + int("a traceback in the broker log" in failures)
    lat = swarm_out.get("latency_ms", {})
    print(f"""
soak: {elapsed / 60:.1f} min ({elapsed:.0f} s), {workers} fuzz workers, swarm of {swarm}
  fuzzed inputs tried      {tally.inputs:,} in {tally.batches:,} batches
  crashes                  {crashes}
  internal replies         {tally.internal}
  batches never answered   {tally.lost}
  connections closed (too_large or limits) {tally.closed_by_broker:,}
  worst ping after a phase {worst_ping:.1f} ms
  max RSS                  {max_rss // 1024} MiB
  swarm (--register, open loop {rate}/s) {swarm_out.get("throughput_rps", 0)} req/s, p99 {lat.get("p99", 0)} ms, errors {swarm_out.get("errors")}
  kill -9 + restart        {"every reservation and bill kept" if not any("lost" in f for f in failures) else "LOST"}
  log                      {broker.log_path} (removed when the soak passes)
""")  # noqa: E501
    for sample in tally.samples:
        print(f"  internal after: {sample[:200]!r}")
    if failures or tally.lost or tally.internal:
        print("soak FAILED: " + "; ".join(failures or ["see figures"]))
        return 1
    print("soak passed")
    shutil.rmtree(folder, ignore_errors=True)  # kept only when something failed
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--swarm", type=int, default=100, help="legitimate vehicles")
    parser.add_argument("--rate", type=int, default=300, help="their requests per second")
    args = parser.parse_args()
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be in (0, 1440]")
    sys.exit(run(args.minutes, max(1, args.workers), max(1, args.swarm), max(1, args.rate)))


if __name__ == "__main__":
    main()
