"""Vehicle gateways: ``serve --gateways 0`` against 1, 2 and 3, side by side in one run.

For each configuration a fresh ``ev-broker serve --insecure --gateways N`` runs and
a load generator in ANOTHER process, pinned to one core with
``os.sched_setaffinity`` (its own CPU is not counted), drives it. Figures:

* CPU time per request summed over every broker process (the core and its
  gateways, from /proc) for ``ping``, ``bateria`` at 10 and at 10,000 points and
  ``reserva`` (a committed write); the ratio to ``--gateways 0`` [reads <= 1.1x,
  reservations <= 1.5x];
* requests/s of ``bateria`` at 10,000 points over 32 connections, closed loop. On
  a 2-core machine the generator takes one core and the broker processes share the
  other, so more gateways cannot show more throughput here: the figure shows the
  cost of the split, and scaling needs a machine with more cores;
* ``idle``: idle vehicle connections held by 5 gateways (as many as this machine
  allows, up to ``EV_BENCH_IDLE``, default 100,000) and the gateways' RSS per
  connection [<= 3 KiB];
* ``resync``: seconds from starting ``serve --gateways 3`` over a database of
  100,000 points to every gateway holding its snapshot, minus the same start with
  ``--gateways 0`` [< 1 s].

Run with ``python -m tests.bench gateways``; ``EV_BENCH_QUICK=1`` shortens it.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import resource
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from tests.bench.bench_broker import register_points
from tests.bench.loadgen import closed_loop
from tests.support.procs import BROKER_READY, broker_ports, free_port, start, start_broker

QUICK = os.environ.get("EV_BENCH_QUICK") == "1"
SECONDS = 2.0 if QUICK else 4.0
CONNS = 32
RESERVATIONS = 1000 if QUICK else 3000
IDLE_TARGET = int(os.environ.get("EV_BENCH_IDLE", "20000" if QUICK else "100000"))
CONFIGS = (0, 1, 2, 3)
TICK = os.sysconf("SC_CLK_TCK")
CENTER = (-12.97, -38.50)


# --- CPU of the broker's processes ---------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its children (the local gateways)."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            out.extend(int(c) for c in text.split())
    except OSError:
        pass
    return out


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


# --- the load generator, in its own pinned process ------------------------------------------


def _pinned(job: tuple[str, int, dict[str, Any]], out: Any) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    kind, port, kw = job
    if kind == "reserva":
        out.put(asyncio.run(_reservations(port, **kw)))
    else:
        r = closed_loop(port, kw["conns"], kw["seconds"], kind, kw["positions"])
        out.put({"done": r["done"], "errors": r["errors"], "elapsed": r["elapsed"]})


def _drive(kind: str, port: int, **kw: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_pinned, args=((kind, port, kw), q))
    p.start()
    try:
        return dict(q.get(timeout=300))
    finally:
        p.join(timeout=30)


async def _reservations(port: int, vehicles: int, base: int) -> dict[str, Any]:
    """One connection per vehicle (opened first, bound by a status), then one reserva each."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(vehicles)]
    for i, (_reader, writer) in enumerate(conns):
        writer.write(b'{"type":"status","data":{"id_veiculo":"RV%d"}}\n' % (base + i))
    for reader, _ in conns:
        await reader.readline()
    t0 = time.perf_counter()

    async def one(i: int) -> bool:
        reader, writer = conns[i]
        idx = base + i
        body = {
            "type": "reserva",
            "data": {"id_veiculo": f"RV{idx}", "id_ponto_recarga": f"BP{idx % 10000:06d}"},
        }
        writer.write((json.dumps(body) + "\n").encode())
        line = await reader.readline()
        return b'"reserved"' in line

    ok = sum(await asyncio.gather(*(one(i) for i in range(vehicles))))
    elapsed = time.perf_counter() - t0
    for _, writer in conns:
        writer.close()
    return {"done": vehicles, "ok": ok, "elapsed": elapsed}


def _positions(n: int) -> list[tuple[float, float]]:
    return [(CENTER[0] + (i % 97) / 200.0 - 0.25, CENTER[1]) for i in range(n)]


# --- one configuration ------------------------------------------------------------------------


def _measure(pids: list[int], kind: str, port: int, **kw: Any) -> tuple[float, dict[str, Any]]:
    """(broker CPU microseconds per request, the generator's result)."""
    c0 = _cpu(pids)
    r = _drive(kind, port, **kw)
    used = _cpu(pids) - c0
    return used / max(1, r["done"]) * 1e6, r


def _config(gateways: int, tmp: str) -> dict[str, Any]:
    ports = broker_ports()
    db = os.path.join(tmp, f"g{gateways}.db")
    extra = ["--insecure", "--log-level", "warning", "--gateways", str(gateways)]
    if gateways:
        extra += ["--gateway-port", str(free_port())]
    proc = start_broker(ports, db, *extra)
    out: dict[str, Any] = {}
    try:
        pids = _tree(proc.pid)
        assert len(pids) == 1 + gateways, pids
        register_points(ports, 0, 10)
        time.sleep(0.5)  # the gateways' replicas hear of them
        loop = {"conns": CONNS, "seconds": SECONDS, "positions": _positions(50)}
        out["ping"], _ = _measure(pids, "ping", ports.vehicle, **loop)
        out["bateria10"], _ = _measure(pids, "bateria", ports.vehicle, **loop)
        register_points(ports, 10, 9990)
        time.sleep(1.0)
        out["bateria10k"], r = _measure(pids, "bateria", ports.vehicle, **loop)
        out["rps"] = r["done"] / r["elapsed"]
        out["reserva"], r = _measure(
            pids, "reserva", ports.vehicle, vehicles=RESERVATIONS, base=gateways * 100_000
        )
        assert r["ok"] == RESERVATIONS, r
    finally:
        proc.stop()
    return out


# --- idle connections over 5 gateways ------------------------------------------------------


PER_HOLDER: Final = 15_000  # connections one holder process opens (below its open-file limit)


def _hold(first: int, count: int, port: int, ready: Any, done: Any) -> None:
    """Open ``count`` idle connections (source addresses spread over 127.0.x.y) and hold them."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    error = ""
    for i in range(first, first + count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((f"127.0.{1 + i // 25000}.{1 + (i // 250) % 100}", 0))
        try:
            s.connect(("127.0.0.1", port))
        except OSError as exc:
            s.close()
            error = str(exc)
            break
        socks.append(s)
    ready.put((len(socks), error))
    done.wait()
    for s in socks:
        s.close()


def _idle(tmp: str) -> None:
    ports = broker_ports()
    proc = start_broker(
        ports,
        os.path.join(tmp, "idle.db"),
        "--insecure", "--log-level", "warning", "--gateways", "5",
        "--gateway-port", str(free_port()), "--max-vehicle-connections", "100000",
    )  # fmt: skip
    ctx = mp.get_context("spawn")
    ready, done = ctx.Queue(), ctx.Event()
    holders = []
    try:
        gw = _tree(proc.pid)[1:]
        time.sleep(1.0)
        before = _rss_kib(gw)
        t0 = time.perf_counter()
        for first in range(0, IDLE_TARGET, PER_HOLDER):
            count = min(PER_HOLDER, IDLE_TARGET - first)
            h = ctx.Process(target=_hold, args=(first, count, ports.vehicle, ready, done))
            h.start()
            holders.append(h)
        opened, errors = 0, []
        for _ in holders:
            n, error = ready.get(timeout=600)
            opened += n
            if error:
                errors.append(error)
        elapsed = time.perf_counter() - t0
        time.sleep(2.0)  # every accept done
        after = _rss_kib(gw)
        per = (after - before) * 1024 / max(1, opened)
        note = f" (a holder stopped: {errors[0]})" if errors else ""
        print(
            f"idle: {opened} connections over 5 gateways{note}, opened in {elapsed:.1f} s; "
            f"gateways' RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB, "
            f"{per:.0f} bytes/connection [<= 3072]"
        )
    finally:
        done.set()
        for h in holders:
            h.join(timeout=60)
        proc.stop()


# --- resync at 100,000 points ---------------------------------------------------------------


def _resync(tmp: str) -> None:
    points = 20_000 if QUICK else 100_000
    db = os.path.join(tmp, "resync.db")
    ports = broker_ports()
    proc = start_broker(ports, db, "--insecure", "--log-level", "warning", "--gateways", "0")
    try:
        register_points(ports, 0, points)
    finally:
        proc.stop()
    times = {}
    for gateways in (0, 3):
        ports = broker_ports()
        extra = ["--insecure", "--log-level", "info", "--gateways", str(gateways)]
        if gateways:
            extra += ["--gateway-port", str(free_port())]
        t0 = time.perf_counter()
        proc = start(["python", "-m", "broker", "serve", *ports.cli_args(), "--db", db, *extra])
        try:
            proc.read_until(BROKER_READY, timeout=120)
            times[gateways] = time.perf_counter() - t0
        finally:
            proc.stop()
    print(
        f"resync: {points} points: serve ready in {times[0]:.2f} s with --gateways 0, "
        f"{times[3]:.2f} s with --gateways 3 (each holding its snapshot): "
        f"+{times[3] - times[0]:.2f} s [< 1 s]"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = {g: _config(g, tmp) for g in CONFIGS}
        base = results[0]
        print(f"load generator pinned to one core; {os.cpu_count()} cores; CPU per request (us)")
        print(f"{'gateways':>8} {'ping':>14} {'bateria@10':>14} {'bateria@10k':>14} "
              f"{'reserva':>14} {'req/s@32':>9}")  # fmt: skip
        for g, r in results.items():
            cells = [
                f"{r[k]:7.1f} {r[k] / base[k]:4.2f}x"
                for k in ("ping", "bateria10", "bateria10k", "reserva")
            ]
            print(f"{g:>8} " + " ".join(f"{c:>14}" for c in cells) + f" {r['rps']:9.0f}")
        _resync(tmp)
        _idle(tmp)
