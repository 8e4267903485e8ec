"""Energy benchmark: the cost of sharing a site's power, and reservations with sites.

Figures printed (goals in brackets):

* core time per allocation event on one site with 10, 100 and 1,000 sessions,
  the allocator (:mod:`broker.core.allocation`) against a naive recompute of the
  same rule in the same run [1,000 sessions: < 1 ms per event];
* confirmed reservations per second of a real broker with every point in sites
  against the same broker without sites, side by side [>= 0.9x].

CPU time of this process (``time.process_time``) for the first; the second
reuses :mod:`tests.bench.bench_broker`'s reservation load. Not part of ``make
test``; run with ``python -m tests.bench energy``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from broker.core.allocation import STEP_W, LimitOrder, SiteAllocator, allocate
from common.codec import pack, unpack
from tests.bench.bench_broker import metric, metrics_text, register_points, run_clients
from tests.support.credentials import curve_client_for
from tests.support.procs import BrokerPorts, broker_ports, start_broker

EVENTS = 400
SIZES = (10, 100, 1000)
SITES = 100  # BP0000*..BP0099*: 100 points each
RESERVING = 2000  # vehicles per client process (two processes)
ROUNDS = 3


def naive_allocate(limit_w: int, mins: list[int], demands: list[int]) -> list[int]:
    """The rule as a textbook recompute: repeated equal-share passes (O(n^2))."""
    mins = [-(-m // STEP_W) * STEP_W for m in mins]
    running: list[int] = []
    used = 0
    for i, m in enumerate(mins):
        if used + m > limit_w:
            break
        used += m
        running.append(i)
    want = {i: max(demands[i], mins[i]) for i in running}
    out = [0] * len(mins)
    left = dict(want)
    remaining = limit_w
    while left:
        share = remaining // len(left) // STEP_W * STEP_W
        small = [i for i, w in left.items() if w <= share]
        if not small:
            for i in left:
                out[i] = share
            break
        for i in small:
            out[i] = left.pop(i)
            remaining -= out[i]
    return out


class NaiveSite:
    """A site that recomputes everything from its session list on every event."""

    def __init__(self, limit_w: int, min_w: int) -> None:
        self.limit_w, self.min_w = limit_w, min_w
        self.sessions: list[tuple[float, str, int, int]] = []  # (start, id, nominal, demand)
        self.sent: dict[str, int] = {}

    def event(self, new_id: Callable[[str], str]) -> list[LimitOrder]:
        order = sorted(self.sessions)
        shares = naive_allocate(
            self.limit_w,
            [min(self.min_w, s[2]) for s in order],
            [s[3] for s in order],
        )
        orders = []
        for s, w in zip(order, shares, strict=True):
            if self.sent.get(s[1]) != w:
                self.sent[s[1]] = w
                orders.append(LimitOrder(new_id("cmd"), "P" + s[1], s[1], w))
        return orders


def _demand(i: int) -> int:
    """Vehicles differ: what session ``i`` takes, 3-22 kW."""
    return 3_000 + (i * 7919) % 19_000


def _ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}-{next(counter)}"


def _settle(site: SiteAllocator, now: float, new_id: Callable[[str], str]) -> None:
    """Reconcile and ack until no command is left (lowerings, then the raises)."""
    for _ in range(3):
        orders = site.reconcile(now, new_id).orders
        if not orders:
            return
        for o in orders:
            site.acked(o.session_id, o.cmd_id)


def allocator_cost(n: int) -> float:
    """Mean CPU seconds per event: events alternate a demand report and a session that
    ends while a new one starts; each is reallocated and its commands acked."""
    new_id = _ids()
    site = SiteAllocator(n * 7_000, 4200)
    for i in range(n):
        site.admit(f"s{i:06d}", f"P{i}", float(i), 22_000, 0)
        site.report_demand(f"s{i:06d}", _demand(i))
    _settle(site, 0.0, new_id)
    oldest, newest = 0, n
    t0 = time.process_time()
    for e in range(EVENTS):
        if e % 2 == 0:
            sid = f"s{oldest + (e * 7919) % (newest - oldest):06d}"
            site.report_demand(sid, 3_000 if e % 4 == 0 else 22_000)
        else:
            site.remove(f"s{oldest:06d}")
            oldest += 1
            site.start(f"s{newest:06d}", "P", float(newest), 22_000, float(e), new_id)
            newest += 1
        _settle(site, float(e), new_id)
    return (time.process_time() - t0) / EVENTS


def naive_cost(n: int) -> float:
    """The same events on :class:`NaiveSite` (no acks to track: it does less)."""
    new_id = _ids()
    site = NaiveSite(n * 7_000, 4200)
    site.sessions = [(float(i), f"s{i:06d}", 22_000, _demand(i)) for i in range(n)]
    site.event(new_id)
    t0 = time.process_time()
    for e in range(EVENTS):
        if e % 2 == 0:
            k = (e * 7919) % len(site.sessions)
            start, sid, nominal, _ = site.sessions[k]
            site.sessions[k] = (start, sid, nominal, 3_000 if e % 4 == 0 else 22_000)
        else:
            site.sessions.pop(0)
            site.sessions.append((float(n + e), f"s{n + e:06d}", 22_000, 22_000))
        site.event(new_id)
    return (time.process_time() - t0) / EVENTS


def check_same_rule() -> None:
    """Both compute the same allocation (else the comparison means nothing)."""
    for n in (1, 7, 50):
        mins = [4200] * n
        demands = [(i * 3301) % 22_000 for i in range(n)]
        for limit in (3_000, 40_000, 90_000, 10**6):
            assert allocate(limit, mins, demands) == naive_allocate(limit, mins, demands)


@contextlib.contextmanager
def _broker(tmp: str, name: str) -> Iterator[tuple[BrokerPorts, int]]:
    ports = broker_ports()
    proc = start_broker(ports, os.path.join(tmp, f"{name}.db"), "--log-level", "warning")
    try:
        yield ports, proc.pid
    finally:
        proc.stop()


def _define_sites(ports: BrokerPorts) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    curve_client_for(sock, ports.history, "operator")
    sock.connect(f"tcp://127.0.0.1:{ports.history}")
    try:
        for k in range(SITES):
            request = {
                "op": "set_site",
                "name": f"S{k}",
                "limit_kw": 500,
                "points": [f"BP00{k:02d}*"],
            }
            sock.send(pack(request))
            assert sock.poll(15_000), "no reply to set_site"
            reply: dict[str, Any] = unpack(sock.recv())
            assert reply.get("ok"), reply
    finally:
        sock.close(linger=0)
        ctx.term()


def _cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` (seconds)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reservations(tmp: str, sites: bool, base: int) -> tuple[float, float]:
    """(reservations/s, broker CPU ms per reservation) of a fresh broker."""
    with _broker(tmp, f"sites-{sites}-{base}") as (ports, pid):
        if sites:
            _define_sites(ports)  # before the points: they have not said "limites" yet
        register_points(ports, 0, 10_000)
        assert metric(metrics_text(ports), "evcharge_points_known") == 10_000
        cpu0 = _cpu_s(pid)
        res = run_clients(
            [
                ("reserva", ports.vehicle, {"vehicles": RESERVING, "base": base + k * 10**6})
                for k in range(2)
            ]
        )
        cpu = _cpu_s(pid) - cpu0
        ok = sum(r["ok"] for r in res)
        took = max(r["elapsed"] for r in res)
        assert ok == 2 * RESERVING, ok
        return ok / took, cpu / ok * 1000


def main() -> None:
    check_same_rule()
    print("allocation cost per event (CPU time of this process; the machine is shared):")
    for n in SIZES:
        mine = allocator_cost(n)
        naive = naive_cost(n)
        print(
            f"  {n:>5} sessions: allocator {mine * 1e6:8.1f} us/event, naive recompute "
            f"{naive * 1e6:9.1f} us/event, ratio naive/allocator {naive / mine:5.1f}x"
            + ("  [goal < 1 ms]" if n == 1000 else "")
        )
    print(f"reservations, {2 * RESERVING} vehicles, 10,000 points (best of {ROUNDS}, alternating):")
    best: dict[bool, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ROUNDS):
            for sites in (False, True):
                rate, cpu = reservations(tmp, sites, r * 10**7)
                old = best.get(sites)
                best[sites] = (max(rate, old[0]), min(cpu, old[1])) if old else (rate, cpu)
    (off_rate, off_cpu), (on_rate, on_cpu) = best[False], best[True]
    print(f"  sites off: {off_rate:8,.0f}/s, broker CPU {off_cpu:.3f} ms per reservation")
    print(f"  sites on ({SITES} sites over every point): {on_rate:8,.0f}/s, {on_cpu:.3f} ms")
    print(
        f"  ratio on/off: throughput {on_rate / off_rate:.2f}x, CPU per reservation "
        f"{off_cpu / on_cpu:.2f}x  [goal >= 0.9x]"
    )


if __name__ == "__main__":
    main()
