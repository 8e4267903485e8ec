"""OCPI figures: GET of 10,000 EVSEs page by page, and status fan-out to 10 eMSPs.

Real processes: a bus double (tests/support/fake_bus.py: the broker's real
ZeroMQ bus and history wire, holding a snapshot of 10,000 points as 1,000
Locations of 10 EVSEs), ``ev-broker ocpi``, and 10 eMSP sinks in a process of
their own (raw asyncio HTTP/1.1, kept-alive, answering OCPI 1000). Printed:

* the time to GET every Location (``limit`` 100 and 1000, following ``Link``),
  the OCPI process's CPU time for it (from /proc) and its resident memory;
* status changes published at 1,000 a second for ``SECONDS``, each pushed to 10
  registered eMSPs: the pushes delivered, the time the outbox needs to drain
  after the last change, the delivery latency (bus event -> eMSP) p50/p99,
  the OCPI process's CPU seconds per second of feed, and whether every eMSP
  ends with every EVSE's final status (it must).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common.timeutil import parse_timestamp
from tests.support.emsp_peer import OcpiClient
from tests.support.fake_bus import FakeBus
from tests.support.procs import Proc, free_port, free_ports, start
from tests.support.raw_clients import wait_for

POINTS = 10_000
PER_LOCATION = 10
EMSPS = 10
RATE_HZ = 1000
SECONDS = float(os.environ.get("OCPI_BENCH_SECONDS", "10"))
TICKS = os.sysconf("SC_CLK_TCK")
PIPELINE = 32  # ev-broker ocpi's default --push-pipeline


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def point_id(i: int) -> str:
    return f"S{i // PER_LOCATION:04d}-{i % PER_LOCATION}"


def snapshot() -> dict[str, Any]:
    rnd = random.Random(7)
    points = [
        {
            "id": point_id(i), "latitude": -12.0 - rnd.random(), "longitude": -38.0 - rnd.random(),
            "estado": "disponivel", "online": True, "potencia_kw": 50.0, "preco_kwh": 2.0,
        }
        for i in range(POINTS)
    ]  # fmt: skip
    return {"points": points, "queues": {}, "sessions": []}


# --- the eMSP sinks (run in their own process: python -m tests.bench.bench_ocpi sinks ...) --


class Sinks:
    def __init__(self) -> None:
        self.count = 0
        self.latency: list[float] = []
        self.last: dict[int, dict[str, str]] = {}

    async def serve(
        self, idx: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        ok = json.dumps({"status_code": 1000, "timestamp": "2026-01-01T00:00:00Z"}).encode()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for h in lines[1:]:
                    if h.lower().startswith("content-length:"):
                        length = int(h.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                out = ok
                base = f"http://127.0.0.1:{writer.get_extra_info('sockname')[1]}/ocpi"
                if path.endswith("/ocpi/versions"):
                    out = envelope([{"version": "2.2.1", "url": f"{base}/2.2.1"}])
                elif path.endswith("/ocpi/2.2.1"):
                    where = f"{base}/2.2.1/locations"
                    ends = [{"identifier": "locations", "role": "RECEIVER", "url": where}]
                    out = envelope({"version": "2.2.1", "endpoints": ends})
                elif path == "/reset":
                    self.count, self.latency, self.last = 0, [], {}
                    out = envelope(None)
                elif path == "/stats":
                    last = {str(k): v for k, v in self.last.items()}
                    out = json.dumps(
                        {"count": self.count, "latency": sorted(self.latency), "last": last}
                    ).encode()
                elif method == "PATCH":
                    doc = json.loads(body)
                    self.count += 1
                    self.latency.append(time.time() - parse_timestamp(doc["last_updated"]))
                    self.last.setdefault(idx, {})[path.rsplit("/", 1)[1]] = doc["status"]
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(out)).encode() + b"\r\n\r\n" + out
                )  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def run_sinks(ports: list[int]) -> None:
    sinks = Sinks()
    servers = [
        await asyncio.start_server(lambda r, w, i=i: sinks.serve(i, r, w), "127.0.0.1", p)
        for i, p in enumerate(ports)
    ]
    print("sinks ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def envelope(data: Any) -> bytes:
    return json.dumps(
        {"status_code": 1000, "timestamp": "2026-01-01T00:00:00Z", "data": data}
    ).encode()


def stats(port: int, path: str = "/stats") -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        return dict(json.loads(resp.read()))


# --- the benchmark ----------------------------------------------------------------------


def get_all(client: OcpiClient, limit: int) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    url: str | None = f"/2.2.1/locations?limit={limit}"
    evses = pages = 0
    while url:
        status, headers, doc = client.call("GET", url)
        assert status == 200, doc
        pages += 1
        evses += sum(len(loc["evses"]) for loc in doc["data"])
        link = headers.get("link")
        url = link.split(";")[0].strip("<>") if link else None
    return time.perf_counter() - t0, evses, pages


def start_ocpi(bus: FakeBus, sink_ports: list[int], tmp: Path, pipeline: int) -> tuple[Proc, str]:
    """A fresh ``ev-broker ocpi`` with every sink registered; (process, token C)."""
    port = free_port()
    db = tmp / f"ocpi-{pipeline}.db"
    ocpi = start(
        [
            "python", "-m", "broker", "ocpi", "--events-port", str(bus.events_port),
            "--history-port", str(bus.history_port), "--port", str(port), "--db", str(db),
            "--retry-initial", "0.2", "--retry-max", "1", "--push-pipeline", str(pipeline),
        ]
    )  # fmt: skip
    ocpi.read_until("ocpi ready", timeout=60)
    base = f"http://127.0.0.1:{port}/ocpi"
    token_c = ""
    for i, sp in enumerate(sink_ports):
        out = subprocess.run(
            [sys.executable, "-m", "broker", "ocpi", "partners", "add", f"emsp{i}",
             "--db", str(db)], capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        token_a = out.strip().rsplit(" ", 1)[-1]
        creds = {
            "token": f"sink{i}", "url": f"http://127.0.0.1:{sp}/ocpi/versions",
            "roles": [{"role": "EMSP", "business_details": {"name": "sink"}, "party_id": "SNK",
                       "country_code": "NL"}],
        }  # fmt: skip
        status, _, doc = OcpiClient(base, token_a).call("POST", "/2.2.1/credentials", creds)
        assert status == 200, doc
        token_c = doc["data"]["token"]
    return ocpi, f"{base}|{token_c}"


def fan_out(bus: FakeBus, ocpi: Proc, sink_ports: list[int], label: str, seed: int) -> None:
    """RATE_HZ status changes a second for SECONDS; waits until every eMSP has the end."""
    stats(sink_ports[0], "/reset")
    rnd = random.Random(seed)
    final: dict[str, str] = {}
    total = int(RATE_HZ * SECONDS)
    c0 = cpu_s(ocpi.pid)
    t0 = time.perf_counter()
    for n in range(total):
        pid = point_id(rnd.randrange(POINTS))
        estado = "carregando" if final.get(pid, "AVAILABLE") == "AVAILABLE" else "disponivel"
        final[pid] = "CHARGING" if estado == "carregando" else "AVAILABLE"
        data = {"point_id": pid, "estado": estado, "queue_size": 0}
        bus.publish("point.status", {**data, "available": estado == "disponivel"})
        ahead = (n + 1) / RATE_HZ - (time.perf_counter() - t0)
        if ahead > 0:
            time.sleep(ahead)
    fed = time.perf_counter() - t0
    c_fed = cpu_s(ocpi.pid)

    def converged() -> bool:
        last = stats(sink_ports[0])["last"]
        return all(
            last.get(str(i), {}).get(pid) == want
            for i in range(EMSPS)
            for pid, want in final.items()
        )

    wait_for(converged, 900, "every eMSP at the final status of every EVSE", interval=0.5)
    drained = time.perf_counter() - t0 - fed
    c1 = cpu_s(ocpi.pid)
    s = stats(sink_ports[0])
    lat = s["latency"]
    rate = total / fed
    print(f"  fan-out, {label}: {total} status changes in {fed:.1f} s ({rate:.0f}/s) x {EMSPS}")
    print(f"    pushes delivered {s['count']} of {total * EMSPS} made (an undelivered status"
          " PATCH takes the newer status of its EVSE)")  # fmt: skip
    p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
    print(f"    every eMSP at the final state {drained:.1f} s after the last change;"
          f" latency p50 {p50:.0f} ms, p99 {p99:.0f} ms")  # fmt: skip
    print(f"    OCPI process CPU {(c_fed - c0) / fed:.2f} s/s while fed,"
          f" {c1 - c0:.1f} s in all, RSS {rss_mib(ocpi.pid):.0f} MiB")  # fmt: skip


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ocpi-bench-"))
    bus = FakeBus()
    bus.snapshot_state = snapshot()
    bus.publish("broker.started", {"points": POINTS, "reservations": 0})
    sink_ports = free_ports(EMSPS)
    sinks = start(["python", "-m", "tests.bench.bench_ocpi", "sinks", *map(str, sink_ports)])
    procs: list[Proc] = [sinks]
    try:
        sinks.read_until("sinks ready", timeout=30)
        print(f"OCPI bench ({POINTS} EVSEs in {POINTS // PER_LOCATION} Locations, {EMSPS} eMSPs;"
              " shared 2-core machine, loaded by others: absolute figures vary)")  # fmt: skip
        for n, pipeline in enumerate((PIPELINE, 1)):
            ocpi, where = start_ocpi(bus, sink_ports, tmp, pipeline)
            procs.append(ocpi)
            if n == 0:
                base, token = where.split("|")
                client = OcpiClient(base, token)
                rss0 = rss_mib(ocpi.pid)
                for limit in (100, 1000):
                    c0 = cpu_s(ocpi.pid)
                    took, evses, pages = get_all(client, limit)
                    c1 = cpu_s(ocpi.pid)
                    assert evses == POINTS, evses
                    print(f"  GET every Location, limit {limit:4d}: {pages:3d} pages,"
                          f" {took:.2f} s wall, {c1 - c0:.2f} s CPU of the OCPI process,"
                          f" RSS {rss_mib(ocpi.pid):.0f} MiB (idle {rss0:.0f} MiB)")  # fmt: skip
            label = "pipelined" if pipeline > 1 else "one push at a time"
            fan_out(bus, ocpi, sink_ports, f"{label} (--push-pipeline {pipeline})", 11)
            ocpi.stop()
    finally:
        for proc in procs:
            proc.stop()
        bus.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sinks":
        asyncio.run(run_sinks([int(p) for p in sys.argv[2:]]))
    else:
        main()
