"""The load generator: N concurrent simulated vehicles, one connection each.

Closed loop (default): every vehicle keeps ``pipeline`` requests in flight
and sends the next one as soon as a reply comes back, which is what saturates
the broker. Open loop (``rate``): a scheduler issues a fixed total number of
requests per second, spread round-robin over the vehicles, whatever the
latency (latency then includes any queueing in the broker).

The "realistic" mix is mostly ``bateria``/``consulta``, with some
``status``/``custos`` and a reservation cycle (``reserva``, ``cancelar``, a
rare ``chegada``). Results: throughput, latency percentiles, refusals by code
(queue_full...) and errors by code (erro replies, timeouts, lost connections).

``register``: every vehicle registers its id (``registrar``) as the first
request of its connection, so the figures include authentication; the time
spent proving ids is reported (``auth_ms``) and not counted in the request
latencies.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from common.errors import (
    BrokerUnreachable,
    ConfigError,
    EVError,
    RequestRefused,
    TransportError,
)
from common.geo import DEMO_CENTER, random_position
from common.ports import VEHICLE_PORT
from vehicle.client import VehicleClient

CONNECT_CONCURRENCY: Final = 100
REQUEST_TIMEOUT: Final = 10.0
STOP_GRACE_S: Final = 0.5

# (operation, weight) per mix
MIXES: Final[dict[str, tuple[tuple[str, int], ...]]] = {
    "realistic": (
        ("bateria", 40),
        ("consulta", 35),
        ("status", 8),
        ("custos", 5),
        ("reserva", 6),
        ("cancelar", 5),
        ("chegada", 1),
    ),
    "ping": (("ping", 1),),
    "bateria": (("bateria", 1),),
    "consulta": (("consulta", 1),),
}


@dataclass(frozen=True)
class SwarmConfig:
    host: str = "127.0.0.1"
    port: int = VEHICLE_PORT
    count: int = 10
    duration: float = 5.0
    rate: float | None = None
    center: tuple[float, float] = DEMO_CENTER
    radius_km: float = 10.0
    pipeline: int = 1
    mix: str = "realistic"
    seed: int | None = None
    id_prefix: str = "SW"
    register: bool = False


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    by_type: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def done(self) -> int:
        return len(self.latencies)


@dataclass
class SwarmResult:
    vehicles: int
    connected: int
    elapsed_s: float
    requests: int
    throughput: float
    latency_ms: dict[str, float]
    by_type: dict[str, int]
    refused: dict[str, int]
    errors: dict[str, int]
    auth_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vehicles": self.vehicles,
            "connected": self.connected,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests": self.requests,
            "throughput_rps": round(self.throughput, 1),
            "latency_ms": self.latency_ms,
            "by_type": self.by_type,
            "refused": self.refused,
            "errors": self.errors,
            "auth_ms": self.auth_ms,
        }


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (nearest-rank), 0 when there are no samples."""
    if not samples:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    s = sorted(samples)
    n = len(s)

    def rank(q: float) -> float:
        return s[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000.0

    return {
        "p50": round(rank(0.50), 3),
        "p90": round(rank(0.90), 3),
        "p99": round(rank(0.99), 3),
        "max": round(s[-1] * 1000.0, 3),
    }


class _Vehicle:
    """One simulated vehicle: its connection, position and reservation."""

    def __init__(self, client: VehicleClient, pos: tuple[float, float], rng: random.Random) -> None:
        self.client = client
        self.lat, self.lon = pos
        self.rng = rng
        self.known: list[str] = []
        self.holding: str | None = None

    async def op(self, name: str, radius_km: float) -> None:
        c = self.client
        if name == "ping":
            await c.request("ping", {})
        elif name == "bateria":
            pts = await c.bateria(self.rng.uniform(5, 40), self.lat, self.lon, limite=5)
            self._learn(pts)
        elif name == "consulta":
            pts = await c.consulta(self.lat, self.lon, distancia_max=radius_km or None, limite=10)
            self._learn(pts)
        elif name == "status":
            await c.status()
        elif name == "custos":
            await c.custos()
        elif name == "reserva":
            if self.holding is None and self.known:
                point = self.rng.choice(self.known)
                await c.reserva(point, self.rng.randint(0, 30))
                self.holding = point
            else:
                await c.status()
        elif name == "cancelar":
            if self.holding is not None:
                point, self.holding = self.holding, None
                await c.cancelar(point)
            else:
                await c.status()
        elif name == "chegada":
            if self.holding is not None:
                point, self.holding = self.holding, None
                level = self.rng.uniform(5, 40)
                await c.chegada(point, level, min(100.0, level + 40), "Pix")
            else:
                await c.status()
        else:  # pragma: no cover - MIXES is validated by the CLI
            raise ConfigError(f"unknown operation {name!r}")

    def _learn(self, points: list[dict[str, Any]]) -> None:
        if points:
            self.known = [str(p.get("id")) for p in points if p.get("id") is not None][:10]


class _Picker:
    """Weighted choice of the next operation (bisect over cumulative weights)."""

    def __init__(self, mix: tuple[tuple[str, int], ...], rng: random.Random) -> None:
        self.names = [n for n, _ in mix]
        self.cum: list[int] = []
        total = 0
        for _, w in mix:
            total += w
            self.cum.append(total)
        self.total = total
        self.rng = rng

    def __call__(self) -> str:
        return self.names[bisect.bisect_right(self.cum, self.rng.random() * self.total)]


async def _one(v: _Vehicle, name: str, cfg: SwarmConfig, stats: Stats) -> None:
    t0 = time.perf_counter()
    try:
        await v.op(name, cfg.radius_km)
    except RequestRefused as exc:
        stats.refused[exc.code] += 1
    except TransportError as exc:
        stats.errors[exc.code] += 1
        await asyncio.sleep(0.05)  # no hot loop while the broker is away
        return
    except EVError as exc:
        stats.errors[exc.code] += 1
    stats.latencies.append(time.perf_counter() - t0)
    stats.by_type[name] += 1


class _Window:
    """The time during which new requests are issued; ``close()`` ends it early."""

    def __init__(self, duration: float) -> None:
        self.start = time.perf_counter()
        self.end = self.start + duration

    def is_open(self) -> bool:
        return time.perf_counter() < self.end

    def close(self) -> None:
        self.end = min(self.end, time.perf_counter())


async def _closed_worker(
    v: _Vehicle, pick: _Picker, cfg: SwarmConfig, stats: Stats, w: _Window
) -> None:
    while w.is_open():
        await _one(v, pick(), cfg, stats)


async def _open_loop(
    vehicles: list[_Vehicle], pick: _Picker, cfg: SwarmConfig, stats: Stats, w: _Window
) -> None:
    assert cfg.rate is not None
    start = time.perf_counter()
    sent = 0
    i = 0
    tasks: set[asyncio.Task[None]] = set()
    while (now := time.perf_counter()) < w.end:
        due = int((now - start) * cfg.rate) - sent
        for _ in range(due):
            v = vehicles[i % len(vehicles)]
            i += 1
            task = asyncio.get_running_loop().create_task(_one(v, pick(), cfg, stats))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent += max(due, 0)
        await asyncio.sleep(0.002)
    if tasks:
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 1)


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards ``needed`` (up to the hard limit)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return int(soft)


async def _connect_all(cfg: SwarmConfig, rng: random.Random, stats: Stats) -> list[_Vehicle]:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    run_tag = f"{rng.randrange(16**4):04X}"

    async def connect(i: int) -> _Vehicle | None:
        vid = f"{cfg.id_prefix}{run_tag}-{i:05d}"
        client = VehicleClient(
            cfg.host,
            cfg.port,
            vid,
            timeout=REQUEST_TIMEOUT,
            timestamps=False,
            reconnect=True,
            register=cfg.register,
        )
        async with sem:
            try:
                await client.connect()
            except BrokerUnreachable:
                stats.errors["connect"] += 1
                return None
            except EVError as exc:  # the id could not be registered
                stats.errors[f"register {exc.code}"] += 1
                return None
        vrng = random.Random(rng.random())
        return _Vehicle(client, random_position(vrng, cfg.center, cfg.radius_km), vrng)

    made = await asyncio.gather(*(connect(i) for i in range(cfg.count)))
    return [v for v in made if v is not None]


async def _progress(stats: Stats, console: Console, w: _Window, every: float) -> None:
    start = w.start
    last_done, last_t = 0, start
    while True:
        await asyncio.sleep(every)
        now = time.perf_counter()
        done = stats.done
        rps = (done - last_done) / max(now - last_t, 1e-9)
        recent = stats.latencies[last_done:]
        p = percentiles(recent[-20000:])
        errs = sum(stats.errors.values())
        console.print(
            f"t={now - start:5.1f}s/{w.end - start:.0f}s  done={done}  rps={rps:,.0f}  "
            f"p50={p['p50']:.2f}ms p99={p['p99']:.2f}ms  refused={sum(stats.refused.values())}"
            f"  errors={errs}",
            markup=False,
            soft_wrap=True,
        )
        last_done, last_t = done, now


async def run_swarm(
    cfg: SwarmConfig,
    progress: Console | None = None,
    progress_every: float = 1.0,
    stop: asyncio.Event | None = None,
) -> SwarmResult:
    """Run the swarm and return its figures; BrokerUnreachable if no vehicle connects.

    With ``progress``, a line of figures is printed there every ``progress_every`` s.
    Setting ``stop`` ends the run early: no new requests, those in flight get
    :data:`STOP_GRACE_S` to finish, and the figures so far are returned.
    """
    rng = random.Random(cfg.seed)
    stats = Stats()
    pick = _Picker(MIXES[cfg.mix], rng)
    raise_fd_limit(cfg.count + 64)
    vehicles = await _connect_all(cfg, rng, stats)
    if not vehicles:
        raise BrokerUnreachable(f"no vehicle could connect to {cfg.host}:{cfg.port}")
    loop = asyncio.get_running_loop()
    window = _Window(cfg.duration)
    reporter = (
        loop.create_task(_progress(stats, progress, window, progress_every))
        if progress is not None
        else None
    )
    if cfg.rate is not None:
        main: asyncio.Future[Any] = loop.create_task(_open_loop(vehicles, pick, cfg, stats, window))
    else:
        main = asyncio.gather(
            *(
                _closed_worker(v, pick, cfg, stats, window)
                for v in vehicles
                for _ in range(cfg.pipeline)
            )
        )
    stopper = loop.create_task((stop or asyncio.Event()).wait())
    try:
        await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not main.done():  # stopped early
            window.close()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(main, STOP_GRACE_S)
        elapsed = time.perf_counter() - window.start
    finally:
        for task in (stopper, reporter, main):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.gather(*(v.client.close() for v in vehicles), return_exceptions=True)
    return SwarmResult(
        vehicles=cfg.count,
        connected=len(vehicles),
        elapsed_s=elapsed,
        requests=stats.done,
        throughput=stats.done / elapsed if elapsed > 0 else 0.0,
        latency_ms=percentiles(stats.latencies),
        by_type=dict(stats.by_type),
        refused=dict(stats.refused),
        errors=dict(stats.errors),
        auth_ms=percentiles([v.client.auth_seconds for v in vehicles]) if cfg.register else {},
    )


def summary_table(data: dict[str, Any]) -> Table:
    """The figures of :meth:`SwarmResult.to_dict` as a table."""
    table = Table(title="Swarm", title_justify="left", show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value", justify="right")
    lat = data.get("latency_ms", {})
    rows: list[tuple[str, str]] = [
        ("vehicles connected", f"{data.get('connected')}/{data.get('vehicles')}"),
        ("duration", f"{data.get('elapsed_s', 0):.2f} s"),
        ("requests", f"{data.get('requests', 0):,}"),
        ("throughput", f"{data.get('throughput_rps', 0):,.0f} req/s"),
    ]
    rows += [(f"latency {k}", f"{v:.2f} ms") for k, v in lat.items()]
    rows += [(f"registrar {k}", f"{v:.2f} ms") for k, v in data.get("auth_ms", {}).items()]
    rows += [(f"sent {k}", f"{v:,}") for k, v in sorted(data.get("by_type", {}).items())]
    rows += [(f"refused {k}", f"{v:,}") for k, v in sorted(data.get("refused", {}).items())]
    rows += [(f"error {k}", f"{v:,}") for k, v in sorted(data.get("errors", {}).items())]
    for name, value in rows:
        table.add_row(name, value)
    return table
