"""Benchmarks of the pure broker core: nearest-point queries, datagrams, reservations.

* k=10 nearest among 100,000 points clustered like a metropolitan fleet, and
  among 100,000 points spread over the globe (us per query);
* an unchanged status datagram through ``Core.handle_datagram`` (the hot path);
* a ``reserva`` through ``Core.handle_request`` (accepted, turn, hold).

Each figure is the best of several rounds of process CPU time (time.process_time),
so that other processes competing for the CPU do not inflate it.
A calibration loop is printed too, so figures from a busy machine can be judged.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable

from broker.core import Core, CoreConfig
from broker.core.geoindex import GeoIndex
from common.messages import Reserva, StatusDatagram, VehicleRequest

N_POINTS = 100_000
N_QUERIES = 5_000
ROUNDS = 5


def best_us(fn: Callable[[], int], rounds: int = ROUNDS) -> float:
    """Best per-operation time in microseconds; ``fn`` returns how many operations it did."""
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        n = fn()
        best = min(best, (time.process_time() - t) / n * 1e6)
    return best


def calibration_ms() -> float:
    """A fixed pure-Python loop (about 60-80 ms on an idle development machine)."""
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        s = 0
        for i in range(2_000_000):
            s += i
        best = min(best, (time.process_time() - t) * 1e3)
    return best


def bench_queries(
    label: str, points: list[tuple[float, float]], queries: list[tuple[float, float]]
) -> None:
    g = GeoIndex()
    t = time.process_time()
    for i, (lat, lon) in enumerate(points):
        g.put(f"CP{i:06d}", lat, lon)
    build_s = time.process_time() - t

    def run() -> int:
        for lat, lon in queries:
            g.nearest(lat, lon, 10)
        return len(queries)

    def run_radius() -> int:
        for lat, lon in queries:
            g.nearest(lat, lon, 10, 2.0)
        return len(queries)

    print(f"geoindex {label}: build {build_s:.2f} s for {len(points):,} points")
    print(f"geoindex {label}: k=10 nearest      {best_us(run):8.1f} us/query")
    print(f"geoindex {label}: k=10 within 2 km  {best_us(run_radius):8.1f} us/query")


def bench_core() -> None:
    ids = itertools.count()
    core = Core(CoreConfig(queue_capacity=5), lambda p: f"{p}-{next(ids)}")
    now = 1_700_000_000.0
    rng = random.Random(3)
    n_points = 10_000
    for i in range(n_points):
        d = StatusDatagram(
            id=f"CP{i:05d}",
            latitude=-12.9 + rng.uniform(-0.3, 0.3),
            longitude=-38.5 + rng.uniform(-0.3, 0.3),
            estado="disponivel",
            boot_id="b",
            seq=0,
        )
        core.handle_datagram(d, now)
    templates = [(p["id"], p["latitude"], p["longitude"]) for p in core.snapshot(now)["points"]]
    # unchanged datagrams, each with the next seq of its point (a healthy station)
    per_point: dict[str, int] = {}
    datagrams = []
    for _ in range(10):
        for pid, lat, lon in templates:
            per_point[pid] = per_point.get(pid, 0) + 1
            datagrams.append(
                StatusDatagram(
                    id=pid,
                    latitude=lat,
                    longitude=lon,
                    estado="disponivel",
                    boot_id="b",
                    seq=per_point[pid],
                )
            )
    handle = core.handle_datagram
    chunks = [datagrams[i : i + 20_000] for i in range(0, len(datagrams), 20_000)]
    it = iter(chunks)

    def run_dgrams() -> int:
        chunk = next(it)
        for d in chunk:
            if handle(d, now):
                raise AssertionError("an unchanged datagram produced effects")
        return len(chunk)

    print(f"core: unchanged datagram  {best_us(run_dgrams):8.2f} us each")

    vehicles = itertools.count()

    def run_reserva() -> int:
        n = 2_000
        for i in range(n):
            req = VehicleRequest("reserva", Reserva(id_ponto_recarga=templates[i % n_points][0]))
            fx = core.handle_request(1, f"V{next(vehicles)}", req, now)
            assert fx
        return n

    print(f"core: reserva (accepted)  {best_us(run_reserva):8.2f} us each")


IDLE_CALIBRATION_MS = 65.0


def main() -> None:
    cal = calibration_ms()
    print(f"calibration loop: {cal:.0f} ms (idle development machine: 60-80 ms)")
    if cal > 1.5 * IDLE_CALIBRATION_MS:
        print(
            f"  the CPU is busy: figures below are about {cal / IDLE_CALIBRATION_MS:.1f}x idle ones"
        )
    rng = random.Random(1)
    city = [
        (-12.9 + rng.uniform(-0.5, 0.5), -38.5 + rng.uniform(-0.5, 0.5)) for _ in range(N_POINTS)
    ]
    city_q = [
        (-12.9 + rng.uniform(-0.5, 0.5), -38.5 + rng.uniform(-0.5, 0.5)) for _ in range(N_QUERIES)
    ]
    bench_queries("metro 100k", city, city_q)
    world = [(rng.uniform(-80, 80), rng.uniform(-180, 180)) for _ in range(N_POINTS)]
    world_q = [(rng.uniform(-80, 80), rng.uniform(-180, 180)) for _ in range(N_QUERIES)]
    bench_queries("world 100k", world, world_q)
    bench_core()


if __name__ == "__main__":
    main()
