"""The read path, side by side: a checkout of an older commit and this tree, in ONE run.

Absolute figures on a shared 2-core machine swing by 2x from minute to minute,
so every figure here is measured on two brokers running at the same time (the
``base`` commit, exported with ``git archive`` into a temporary folder, and this
working tree), in alternating rounds, and printed as a ratio new/old. Each
broker's own CPU time per request is printed too: it is far less sensitive to
the load of the machine than a rate.

Load comes from :mod:`tests.bench.loadgen` (raw sockets + epoll, one process),
never from the code under test; its CPU use is printed so that a figure can be
trusted only while it stayed below one core.

Figures (each for old and new, with the ratio):

* ``ping``, ``bateria`` and ``consulta`` (the original client's requests:
  unframed; ``bateria`` level 15, 10 nearest; ``consulta`` without a limit, so up
  to 100 points) closed loop over 32 connections with 10, 1,000 and 10,000
  points, each query from a new random position (moving vehicles;
  ``EV_BENCH_FIXED=1`` cycles 97 fixed positions instead);
* ``bateria`` open loop at half the new closed-loop rate (10 points): p50/p99;
* ``bateria`` / ``ping`` of each broker;
* confirmed reservations per second, UDP ingest, RSS with 100,000 points and
  10,000 idle connections;
* first, without sockets: CPU per request through the core and the reply
  encoder (:mod:`tests.bench.core_cost`, process time, best of 5).

Run: ``python -m tests.bench read_path`` (``EV_BENCH_BASE`` = the older commit,
default ``506897b``; ``EV_BENCH_SECONDS`` per run, default 3; ``EV_BENCH_ROUNDS``
default 3; ``EV_BENCH_PHASES`` any of ``core,read,other,memory``; ``EV_BENCH_KINDS``
any of ``ping,bateria,consulta``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench import core_cost, loadgen
from tests.bench.bench_broker import (
    OK,
    POINTS,
    bench_point,
    bench_position,
    bench_reservations,
    metric,
    metrics_text,
    rss_mib,
)
from tests.support.procs import ROOT, BrokerPorts, Proc, broker_ports, start

BASE = os.environ.get("EV_BENCH_BASE", "506897b")
SECONDS = float(os.environ.get("EV_BENCH_SECONDS", "3"))
ROUNDS = int(os.environ.get("EV_BENCH_ROUNDS", "3"))
PHASES = os.environ.get("EV_BENCH_PHASES", "core,read,other,memory").split(",")
KINDS = os.environ.get("EV_BENCH_KINDS", "ping,bateria,consulta").split(",")
#: every query at a new random position (moving vehicles); EV_BENCH_FIXED=1 cycles QUERIES
MOVING = os.environ.get("EV_BENCH_FIXED", "") in ("", "0")
CONNS = 32
#: query positions: inside the cloud of points (bench_broker's square of 1 degree); with
#: moving positions (the default) each query is drawn uniformly in their bounding box
QUERIES = [bench_position(10_000_000 + i) for i in range(97)]


# --- the two brokers ------------------------------------------------------------------------


def export_tree(commit: str, into: Path) -> Path:
    """``commit``'s files in ``into`` (read-only use of the repository)."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


class Broker:
    """One ``python -m broker serve`` started from ``tree`` (its own code first on sys.path)."""

    def __init__(
        self, name: str, tree: Path, db: str, extra: list[str], profile_to: str = ""
    ) -> None:
        self.name = name
        self.ports: BrokerPorts = broker_ports()
        profiler = ["-m", "cProfile", "-o", profile_to] if profile_to else []
        args = ["python", *profiler, "-m", "broker", "serve", *self.ports.cli_args()]
        args += ["--db", db, *extra]
        self.proc: Proc = start([*args, "--log-level", "warning"], cwd=tree)
        try:
            self.proc.read_until("ready", timeout=30)
            # the code really is the tree's: ask the process's own interpreter
            where = subprocess.run(
                [sys.executable, "-c", "import broker; print(broker.__file__)"],
                cwd=tree,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            assert where.startswith(str(tree)), f"{name} would import {where}"
        except BaseException:
            self.proc.stop()
            raise

    def cpu(self) -> float:
        """The broker process's CPU seconds so far (user + system)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick

    def points(self) -> float:
        text = metrics_text(self.ports)
        # the name of this figure before the metrics were renamed, for older trees
        return max(metric(text, POINTS), metric(text, 'evcharge_core{figure="points"}'))

    def stop(self) -> None:
        self.proc.stop()


def register(brokers: list[Broker], upto: int) -> None:
    """Register points BP000000.. up to ``upto`` on every broker (by status datagram)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for b in brokers:
            first = int(b.points())
            for lo in range(first, upto, 1000):
                hi = min(upto, lo + 1000)
                for i in range(lo, hi):
                    s.sendto(bench_point(i), ("127.0.0.1", b.ports.status))
                deadline = time.monotonic() + 60
                while b.points() < hi and time.monotonic() < deadline:
                    time.sleep(0.02)
            if b.points() < upto:
                raise RuntimeError(f"{b.name}: only {b.points()} of {upto} points registered")


# --- load ----------------------------------------------------------------------------------


def _in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run a load function in a fresh process (its CPU is its own)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        result: dict[str, Any] = pool.apply(fn, args)
    return result


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000 if values else float("nan")


def measure(b: Broker, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    cpu0 = b.cpu()
    r = _in_child(fn, b.ports.vehicle, *args)
    r["broker_cpu"] = b.cpu() - cpu0
    r["rate"] = r["done"] / r["elapsed"]
    r["broker_us"] = r["broker_cpu"] / max(1, r["done"]) * 1e6
    r["gen_load"] = r["cpu"] / r["elapsed"]
    return r


def alternate(
    brokers: list[Broker], label: str, run: Callable[[Broker], dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """ROUNDS rounds, the order of the brokers swapped every round; prints each run."""
    out: dict[str, list[dict[str, Any]]] = {b.name: [] for b in brokers}
    for k in range(ROUNDS):
        for b in brokers if k % 2 == 0 else brokers[::-1]:
            r = run(b)
            out[b.name].append(r)
            print(
                f"  {label:<34} {b.name:<3} round {k + 1}: {r['rate']:>9,.0f} req/s  "
                f"p99 {pct(r['lat'], 0.99):6.2f} ms  broker {r['broker_us']:6.1f} us/req  "
                f"generator {100 * r['gen_load']:3.0f} % of a core",
                flush=True,
            )
    return out


def _median_rate(runs: list[dict[str, Any]]) -> float:
    return sorted(r["rate"] for r in runs)[len(runs) // 2]


def summary(label: str, runs: dict[str, list[dict[str, Any]]], goal: str = "") -> float:
    """Median rate of each side and the new/old ratio of medians (rate and CPU per request)."""

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    old = med([r["rate"] for r in runs["old"]])
    new = med([r["rate"] for r in runs["new"]])
    old_us = med([r["broker_us"] for r in runs["old"]])
    new_us = med([r["broker_us"] for r in runs["new"]])
    print(
        f"= {label:<34} old {old:>9,.0f}  new {new:>9,.0f} req/s  ratio {new / old:5.2f}x   "
        f"broker CPU/request old {old_us:6.1f} us new {new_us:6.1f} us ({old_us / new_us:4.2f}x)"
        f"{'   goal ' + goal if goal else ''}",
        flush=True,
    )
    return new


# --- other figures ---------------------------------------------------------------------------


def _reserve(port: int, vehicles: int, base: int) -> dict[str, Any]:
    import uvloop

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cpu0 = sum(os.times()[:2])
    r: dict[str, Any] = uvloop.run(bench_reservations(port, vehicles, base))
    r["cpu"] = sum(os.times()[:2]) - cpu0
    return r


def reservations(brokers: list[Broker]) -> None:
    rates: dict[str, list[float]] = {b.name: [] for b in brokers}
    cpu_us: dict[str, list[float]] = {b.name: [] for b in brokers}
    for k in range(ROUNDS):
        for b in brokers if k % 2 == 0 else brokers[::-1]:
            cpu0 = b.cpu()
            r = _in_child(_reserve, b.ports.vehicle, 2000, (k + 1) * 10**6)
            us = (b.cpu() - cpu0) / max(1, r["ok"]) * 1e6
            rates[b.name].append(r["ok"] / r["elapsed"])
            cpu_us[b.name].append(us)
            print(
                f"  reservations confirmed {b.name:<3} round {k + 1}: "
                f"{r['ok'] / r['elapsed']:,.0f}/s ({r['ok']} in {r['elapsed']:.2f} s), "
                f"broker {us:.0f} us per reservation (connection, binding and commit included)"
            )
    old, new = (sorted(rates[n])[ROUNDS // 2] for n in ("old", "new"))
    old_us, new_us = (sorted(cpu_us[n])[ROUNDS // 2] for n in ("old", "new"))
    print(
        f"= reservations confirmed/s  old {old:,.0f}  new {new:,.0f}  ratio {new / old:.2f}x   "
        f"broker CPU per reservation old {old_us:.0f} us new {new_us:.0f} us"
    )


def _udp_send(port: int, rate: float, seconds: float, boot: str) -> dict[str, Any]:
    total = int(rate * seconds)
    payloads = [bench_point(i % 500, boot_id=boot, seq=i + 1) for i in range(total)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            ahead = sent - (time.perf_counter() - t0) * rate
            if ahead > 0:
                time.sleep(ahead / rate)
            for payload in payloads[sent : sent + 200]:
                s.sendto(payload, ("127.0.0.1", port))
            sent = min(total, sent + 200)
        return {"sent": sent, "elapsed": time.perf_counter() - t0}


def udp_ingest(brokers: list[Broker], rate: float) -> None:
    got: dict[str, list[float]] = {b.name: [] for b in brokers}
    for k in range(ROUNDS):
        for b in brokers if k % 2 == 0 else brokers[::-1]:
            before = metric(metrics_text(b.ports), OK)
            cpu0 = b.cpu()
            boot = f"bench-{rate:.0f}-{k}-{random.random()}"
            r = _in_child(_udp_send, b.ports.status, rate, 1.0, boot)
            time.sleep(1.0)
            ok = metric(metrics_text(b.ports), OK) - before
            us = (b.cpu() - cpu0) / max(1.0, ok) * 1e6
            got[b.name].append(ok / r["sent"])
            print(
                f"  udp @ {rate:,.0f}/s {b.name:<3} round {k + 1}: sent {r['sent']:,} in "
                f"{r['elapsed']:.2f} s, accepted {ok:,.0f} ({100 * ok / r['sent']:.1f} %), "
                f"broker {us:.1f} us/datagram"
            )
    old, new = (sorted(got[n])[ROUNDS // 2] for n in ("old", "new"))
    print(
        f"= udp ingest @ {rate:,.0f}/s offered  accepted old {100 * old:.1f} %  "
        f"new {100 * new:.1f} %"
    )


def memory(brokers: list[Broker]) -> None:
    """RSS with 100,000 points and 10,000 idle connections, one broker at a time."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rss: dict[str, float] = {}
    try:
        register(brokers, 100_000)
        for b in brokers:
            idle: list[socket.socket] = []
            try:
                for i in range(10_000):
                    s = socket.create_connection(("127.0.0.1", b.ports.vehicle), timeout=10)
                    s.sendall(b'{"type":"ping","data":{"id_veiculo":"IDLE%d"}}\n' % i)
                    idle.append(s)
                for s in idle:  # every connection answered: the broker holds all of them
                    s.settimeout(10)
                    s.recv(4096)
                rss[b.name] = rss_mib(b.proc.pid)
                print(f"  memory {b.name:<3}: {rss[b.name]:,.0f} MiB RSS, {len(idle):,} idle conns")
            finally:
                for s in idle:
                    s.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(
        f"= memory, 100,000 points + 10,000 connections  old {rss['old']:,.0f} MiB  "
        f"new {rss['new']:,.0f} MiB  ratio {rss['new'] / rss['old']:.2f}x"
    )


# --- the benchmark ---------------------------------------------------------------------------


def extra_args(tree: Path) -> list[str]:
    """Options a tree's broker needs to accept the bench's plain clients."""
    help_text = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--help"],
        cwd=tree,
        capture_output=True,
        text=True,
    ).stdout
    return ["--insecure"] if "--insecure" in help_text else []


def core_costs(old_tree: Path) -> None:
    """CPU per request through core + reply encoder (no sockets), old and new alternating.

    Process CPU time, best of several rounds, so it holds up on a loaded machine.
    """
    cases = ["10:ping", "10:bateria", "1000:bateria", "10000:bateria"]
    core_cost.compare(old_tree, cases, ROUNDS)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = export_tree(BASE, Path(tmp, "old"))
        brokers: list[Broker] = []
        try:
            for name, tree in (("old", old_tree), ("new", ROOT)):
                db = os.path.join(tmp, f"{name}.db")
                brokers.append(Broker(name, tree, db, extra_args(tree)))
            print(f"old = {BASE} (git archive), new = this tree; {ROUNDS} rounds of {SECONDS} s")
            if "core" in PHASES:
                core_costs(old_tree)
            _bench(brokers)
        finally:
            for b in brokers:
                b.stop()


def _bench(brokers: list[Broker]) -> None:
    if "read" in PHASES:
        _read_figures(brokers)
    if "other" in PHASES:
        _other_figures(brokers)
    if "memory" in PHASES:
        memory(brokers)


#: broker CPU per request goals of the read path (us), by request kind and points
GOAL_US = {
    ("ping", 10): 15.0,
    ("bateria", 10): 27.0,
    ("bateria", 1_000): 35.0,
    ("bateria", 10_000): 35.0,
    ("consulta", 10): 27.0,
    ("consulta", 1_000): 35.0,
    ("consulta", 10_000): 35.0,
}


def _read_figures(brokers: list[Broker]) -> None:
    new_rate: dict[int, float] = {}
    ping_rate: dict[str, float] = {}
    where = "moving" if MOVING else "fixed"
    for npoints in (10, 1_000, 10_000):
        register(brokers, npoints)
        kinds = [k for k in KINDS if k != "ping" or npoints == 10]
        for kind in kinds:
            label = f"{kind} closed, {CONNS} conns, {npoints:,} pts, {where}"
            runs = alternate(
                brokers,
                label,
                lambda b, kind=kind: measure(
                    b, loadgen.closed_loop, CONNS, SECONDS, kind, QUERIES, MOVING
                ),
            )
            goal = GOAL_US.get((kind, npoints))
            rate = summary(label, runs, f"<= {goal:.0f} us" if goal else "")
            if kind == "ping":
                ping_rate = {n: _median_rate(rs) for n, rs in runs.items()}
            elif kind == "bateria":
                new_rate[npoints] = rate
                bat = {n: _median_rate(rs) for n, rs in runs.items()}
                if npoints == 10 and ping_rate:
                    print(
                        f"= bateria / ping  old {bat['old'] / ping_rate['old']:.2f}  "
                        f"new {bat['new'] / ping_rate['new']:.2f}"
                    )
        if npoints == 10 and 10 in new_rate:
            half = new_rate[10] / 2
            label = f"bateria open @ {half:,.0f}/s, 10 pts, {where}"
            runs = alternate(
                brokers,
                label,
                lambda b, half=half: measure(
                    b, loadgen.open_loop, CONNS, half, SECONDS, QUERIES, MOVING
                ),
            )
            for name in ("old", "new"):
                lat = [x for r in runs[name] for x in r["lat"]]
                print(
                    f"= {label:<34} {name}: p50 {pct(lat, 0.5):.2f} ms  p99 {pct(lat, 0.99):.2f} ms"
                    f"{'   goal p99 no worse than old' if name == 'new' else ''}"
                )


def _other_figures(brokers: list[Broker]) -> None:
    register(brokers, 10_000)
    reservations(brokers)
    for rate in (20_000.0, 100_000.0):
        udp_ingest(brokers, rate)


if __name__ == "__main__":
    main()
