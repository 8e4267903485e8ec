"""Broker benchmark: a real ``ev-broker serve`` process loaded from separate client processes.

Figures printed (targets on a 2-core machine in brackets):

* ``bateria`` (10 nearest of 10,000 points) over 64 connections, closed loop:
  requests/s [>= 20,000];
* the same at a fixed 5,000 req/s (open loop): p50/p99 latency [p99 < 10 ms];
* UDP status ingest at a fixed rate: datagrams/s accepted and loss % [100,000/s, < 0.1 %];
* confirmed (committed) reservations per second [>= 3,000];
* broker RSS with 100,000 points and 10,000 idle vehicle connections [< 1 GiB].

Run with ``python -m tests.bench`` (``make bench``); not part of ``make test``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import socket
import tempfile
import time
import urllib.request
from typing import Any

from tests.support.procs import BrokerPorts, broker_ports, start_broker

CENTER = (-12.97, -38.50)
CLIENT_PROCS = 2
CONNS = 64
POINTS = "evcharge_points_known"
OK = 'evcharge_datagrams_total{outcome="ok"}'


def bench_position(i: int) -> tuple[float, float]:
    """Point ``i``'s fixed position (stations do not move between datagrams)."""
    rng = random.Random(i)
    return CENTER[0] + rng.uniform(-0.5, 0.5), CENTER[1] + rng.uniform(-0.5, 0.5)


def bench_point(i: int, **extra: Any) -> bytes:
    lat, lon = bench_position(i)
    body = {
        "id": f"BP{i:06d}",
        "latitude": lat,
        "longitude": lon,
        "available": True,
        "interval_s": 3600.0,
        "potencia_kw": 50.0,
        "preco_kwh": 2.0,
        **extra,
    }
    return json.dumps(body).encode()


def register_points(ports: BrokerPorts, start: int, count: int) -> float:
    """Register points by datagram, in chunks the broker can absorb; returns points/s."""
    t0 = time.perf_counter()
    chunk = 1000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for first in range(start, start + count, chunk):
            last = min(start + count, first + chunk)
            for i in range(first, last):
                s.sendto(bench_point(i), ("127.0.0.1", ports.status))
            deadline = time.monotonic() + 30
            while metric(metrics_text(ports), POINTS) < last and time.monotonic() < deadline:
                time.sleep(0.02)
    return count / (time.perf_counter() - t0)


def metrics_text(ports: BrokerPorts) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{ports.http}/metrics", timeout=10) as r:
        return str(r.read().decode())


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _bateria(i: int, vehicle_id: str) -> bytes:
    lat = CENTER[0] + (i % 97) / 200.0 - 0.25
    body = {
        "type": "bateria",
        "data": {
            "id_veiculo": vehicle_id,
            "nivel_bateria": 50,
            "localizacao": {"latitude": lat, "longitude": CENTER[1]},
        },
    }
    return (json.dumps(body) + "\n").encode()


# --- client processes ------------------------------------------------------------------------


async def _closed_loop(
    port: int, conns: int, seconds: float, kind: str, base: int
) -> dict[str, Any]:
    done = 0
    ok = 0
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done, ok
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            n = 0
            vehicle_id = f"BV{os.getpid()}_{w}"
            ping = b'{"type":"ping","data":{"id_veiculo":"%s"}}\n' % vehicle_id.encode()
            while time.perf_counter() < stop_at:
                writer.write(ping if kind == "ping" else _bateria(n, vehicle_id))
                n += 1
                line = await reader.readline()
                if not line:
                    return
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(w) for w in range(conns)))
    return {"done": done, "ok": ok}


async def bench_reservations(port: int, vehicles: int, base: int) -> dict[str, Any]:
    """One connection per vehicle, opened first; then every vehicle reserves at once."""
    conns = []
    for _i in range(vehicles):
        conns.append(await asyncio.open_connection("127.0.0.1", port))
    t0 = time.perf_counter()

    async def one(i: int) -> bool:
        reader, writer = conns[i]
        idx = base + i
        body = {
            "type": "reserva",
            "data": {"id_veiculo": f"RV{idx}", "id_ponto_recarga": f"BP{idx % 10000:06d}"},
        }
        writer.write((json.dumps(body) + "\n").encode())
        while True:
            line = await reader.readline()
            if not line:
                return False
            if b'"reserva_response"' in line:
                return b'"reserved"' in line

    results = await asyncio.gather(*(one(i) for i in range(vehicles)))
    elapsed = time.perf_counter() - t0
    for _, writer in conns:
        writer.close()
    return {"ok": sum(results), "elapsed": elapsed}


async def _open_loop(port: int, conns: int, rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    per_conn = rate / conns

    async def worker(w: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent: list[float] = []

        async def read() -> None:
            i = 0
            while i < len(sent) or not finished:
                line = await reader.readline()
                if not line:
                    return
                latencies.append(time.perf_counter() - sent[i])
                i += 1

        finished = False
        rtask = asyncio.create_task(read())
        t0 = time.perf_counter() + w / rate
        n = 0
        while True:
            due = t0 + n / per_conn
            if due - t0 > seconds:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(time.perf_counter())
            writer.write(_bateria(n, f"OV{os.getpid()}_{w}"))
            n += 1
        finished = True
        try:
            await asyncio.wait_for(rtask, 10)
        finally:
            writer.close()

    await asyncio.gather(*(worker(w) for w in range(conns)))
    return latencies


def _client(job: tuple[str, int, dict[str, Any]], out: Any) -> None:
    import uvloop

    kind, port, args = job
    if kind == "reserva":
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        out.put(uvloop.run(bench_reservations(port, args["vehicles"], args["base"])))
    elif kind == "open":
        out.put(uvloop.run(_open_loop(port, args["conns"], args["rate"], args["seconds"])))
    else:
        out.put(
            uvloop.run(
                _closed_loop(port, args["conns"], args["seconds"], kind, args.get("base", 0))
            )
        )


def _udp_client(port: int, rate: float, seconds: float, first: int, out: Any) -> None:
    total = int(rate * seconds)
    payloads = [
        bench_point(first + i % 500, boot_id=f"bench{rate}", seq=i + 1) for i in range(total)
    ]
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        sendto = s.sendto
        target = ("127.0.0.1", port)
        t0 = time.perf_counter()
        batch = 200
        while sent < total:
            ahead = sent - (time.perf_counter() - t0) * rate
            if ahead > 0:
                time.sleep(ahead / rate)
            for payload in payloads[sent : sent + batch]:
                sendto(payload, target)
            sent = min(total, sent + batch)
        out.put((sent, time.perf_counter() - t0))


def run_clients(jobs: list[tuple[str, int, dict[str, Any]]]) -> list[Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(job, q)) for job in jobs]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    return results


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000 if values else float("nan")


# --- the benchmark -----------------------------------------------------------------------------


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ports = broker_ports()
        proc = start_broker(ports, os.path.join(tmp, "bench.db"), "--log-level", "warning")
        try:
            _bench(ports, proc.pid)
        finally:
            proc.stop()


def _bench(ports: BrokerPorts, pid: int) -> None:
    rate_reg = register_points(ports, 0, 10_000)
    print(f"points registered: {metric(metrics_text(ports), POINTS):,.0f} ({rate_reg:,.0f}/s)")
    per = CONNS // CLIENT_PROCS
    seconds = 3.0

    for kind in ("ping", "bateria"):
        res = run_clients(
            [(kind, ports.vehicle, {"conns": per, "seconds": seconds})] * CLIENT_PROCS
        )
        total = sum(r["done"] for r in res)
        print(f"{kind} closed loop, {CONNS} conns: {total / seconds:,.0f} req/s")

    for rate in (1000.0, 5000.0):
        args = {"conns": per, "rate": rate / CLIENT_PROCS, "seconds": seconds}
        lat_lists = run_clients([("open", ports.vehicle, args)] * CLIENT_PROCS)
        lat = [x for lst in lat_lists for x in lst]
        print(
            f"bateria @ {rate:,.0f} req/s offered: answered {len(lat) / seconds:,.0f}/s, "
            f"p50={_pct(lat, 0.5):.2f} ms p99={_pct(lat, 0.99):.2f} ms"
        )

    before = metric(metrics_text(ports), OK)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    for udp_rate in (20_000.0, 100_000.0):
        senders = [
            ctx.Process(target=_udp_client, args=(ports.status, udp_rate / 2, 1.0, k * 500, q))
            for k in range(2)
        ]
        for p in senders:
            p.start()
        results = [q.get(timeout=60) for _ in senders]
        for p in senders:
            p.join(timeout=10)
        sent = sum(r[0] for r in results)
        took = max(r[1] for r in results)
        time.sleep(1.0)
        text = metrics_text(ports)
        got = metric(text, OK) - before
        before = metric(text, OK)
        loss = 100.0 * (sent - got) / max(1, sent)
        print(
            f"udp ingest @ {udp_rate:,.0f}/s offered: sent {sent:,} in {took:.2f}s "
            f"({sent / took:,.0f}/s), accepted {got:,.0f}, loss {loss:.3f} %"
        )

    vehicles = 2000
    res = run_clients(
        [("reserva", ports.vehicle, {"vehicles": vehicles, "base": k * 10**6}) for k in range(2)]
    )
    ok = sum(r["ok"] for r in res)
    took = max(r["elapsed"] for r in res)
    print(f"reservations confirmed (committed): {ok / took:,.0f}/s ({ok} in {took:.2f} s)")

    rate_reg = register_points(ports, 10_000, 90_000)
    print(f"points registered: {metric(metrics_text(ports), POINTS):,.0f} ({rate_reg:,.0f}/s)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    idle: list[socket.socket] = []
    try:
        for i in range(10_000):
            try:
                s = socket.create_connection(("127.0.0.1", ports.vehicle), timeout=5)
            except OSError as exc:
                print(f"idle connections: stopped at {i}: {exc}")
                break
            s.sendall(b'{"type":"ping","data":{"id_veiculo":"IDLE%d"}}\n' % i)
            idle.append(s)
        time.sleep(1.0)
        points = metric(metrics_text(ports), POINTS)
        print(
            f"memory: {rss_mib(pid):,.0f} MiB RSS with {points:,.0f} points, "
            f"{len(idle):,} idle connections"
        )
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    main()
