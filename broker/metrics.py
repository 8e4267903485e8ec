"""A tiny metrics registry rendered in the Prometheus text exposition format.

Counters and histograms are plain dict updates (cheap on the hot path);
gauges (and counters kept by another part, such as the ZeroMQ edges) are
callbacks read at scrape time, so they never go stale. One name per quantity,
Prometheus style: ``_total`` counters, gauges, ``_seconds`` histograms; the
full list is in docs/ops.md ("Metrics").
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

LabelValues = tuple[str, ...]

# request latency buckets, seconds
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Counter:
    """A monotonically increasing count per label set."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = labels
        self.values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_num(value)}"


class Gauge:
    """A value read from a callback at scrape time (one sample per returned label set)."""

    def __init__(
        self,
        name: str,
        help_text: str,
        read: Callable[[], dict[LabelValues, float]],
        labels: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.help = help_text
        self.label_names = labels
        self.read = read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in sorted(self.read().items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_num(value)}"


class CounterFunc(Gauge):
    """A counter kept elsewhere, read from a callback at scrape time."""

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.read().items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_num(value)}"


class Histogram:
    """Cumulative buckets, sum and count per label set."""

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
        labels: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self.label_names = labels
        self.counts: dict[LabelValues, list[int]] = {}
        self.sums: dict[LabelValues, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
            self.sums[labels] = 0.0
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def count(self, *labels: str) -> int:
        return sum(self.counts.get(labels, ()))

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, counts in sorted(self.counts.items()):
            cumulative = 0
            for bound, n in zip(self.buckets, counts, strict=False):
                cumulative += n
                le = _labels(self.label_names, labels, f'le="{bound}"')
                yield f"{self.name}_bucket{le} {cumulative}"
            cumulative += counts[-1]
            inf = _labels(self.label_names, labels, 'le="+Inf"')
            yield f"{self.name}_bucket{inf} {cumulative}"
            base = _labels(self.label_names, labels)
            yield f"{self.name}_sum{base} {_num(self.sums[labels])}"
            yield f"{self.name}_count{base} {cumulative}"


Metric = Counter | Gauge | CounterFunc | Histogram


class Registry:
    """The broker's metrics, in registration order."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self.metrics.append(metric)
        return metric

    def gauge(
        self,
        name: str,
        help_text: str,
        read: Callable[[], dict[LabelValues, float]],
        labels: tuple[str, ...] = (),
    ) -> Gauge:
        metric = Gauge(name, help_text, read, labels)
        self.metrics.append(metric)
        return metric

    def counter_func(
        self,
        name: str,
        help_text: str,
        read: Callable[[], dict[LabelValues, float]],
        labels: tuple[str, ...] = (),
    ) -> CounterFunc:
        metric = CounterFunc(name, help_text, read, labels)
        self.metrics.append(metric)
        return metric

    def histogram(
        self,
        name: str,
        help_text: str,
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
        labels: tuple[str, ...] = (),
    ) -> Histogram:
        metric = Histogram(name, help_text, buckets, labels)
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        """The whole registry in Prometheus text format (version 0.0.4)."""
        lines: list[str] = []
        for metric in self.metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


class BrokerMetrics:
    """Every counter the broker keeps; gauges are added by :func:`add_state_metrics`."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.requests = r.counter(
            "evcharge_requests_total", "Vehicle requests by type and result", ("type", "result")
        )
        self.errors = r.counter("evcharge_errors_total", "Error replies by code", ("code",))
        self.latency = r.histogram(
            "evcharge_request_duration_seconds",
            "Time from a vehicle request decoded to its reply written, by request type",
            labels=("type",),
        )
        self.datagrams = r.counter(
            "evcharge_datagrams_total", "Station status datagrams by outcome", ("outcome",)
        )
        self.events = r.counter(
            "evcharge_events_total", "Bus events published by topic", ("topic",)
        )
        self.connections = r.counter(
            "evcharge_vehicle_connections_total", "Vehicle TCP connections accepted"
        )
        self.commits = r.counter("evcharge_store_commits_total", "Store transactions committed")
        self.rejected = r.counter(
            "evcharge_rejected_total",
            "Input refused or dropped, by edge and reason",
            ("edge", "reason"),
        )
        self.pruned = r.counter(
            "evcharge_events_pruned_total", "Events deleted from the log (--retain-events)"
        )
        # business figures, from the charging.completed events the broker publishes
        self.energy = r.counter(
            "evcharge_energy_delivered_kwh_total", "Energy delivered by completed sessions, kWh"
        )
        self.revenue = r.counter(
            "evcharge_revenue_total", "Amount billed for completed sessions", ("currency",)
        )
        self.sessions = r.counter(
            "evcharge_sessions_completed_total", "Charging sessions completed by end reason",
            ("reason",),
        )  # fmt: skip

    def event_published(self, topic: str, data: Mapping[str, Any]) -> None:
        """Count one published bus event (and the business figures of a completed session)."""
        self.events.inc(topic)
        if topic == "charging.completed":
            self.energy.inc(amount=float(data.get("energy_kwh") or 0.0))
            self.revenue.inc(
                str(data.get("currency") or "BRL"), amount=float(data.get("cost") or 0)
            )
            self.sessions.inc(str(data.get("reason") or "unknown"))


class StateSource(Protocol):
    """What :func:`add_state_metrics` reads at scrape time."""

    def core_stats(self) -> Mapping[str, Any]: ...
    def zmq_stats(self) -> Mapping[str, Mapping[str, int]]: ...
    def vehicles_connected(self) -> int: ...
    def vehicle_connections_open(self) -> int: ...


CORE_GAUGES: Final = (
    ("points", "evcharge_points_known", "Charging points the broker knows"),
    ("points_online", "evcharge_points_online", "Charging points heard from recently"),
    ("sessions_active", "evcharge_sessions_active", "Charging sessions running"),
    ("reservations", "evcharge_vehicles_queued", "Vehicles holding a reservation (queued)"),
    ("pending_starts", "evcharge_starts_pending", "Session starts waiting for the station's ack"),
    ("timers", "evcharge_timers", "Deadlines the core is waiting for"),
)
# counters the core keeps (station anomalies): core stats key -> metric name
CORE_COUNTERS: Final = (
    ("datagrams", "evcharge_core_datagrams_total", "Status datagrams applied by the core"),
    ("datagrams_stale", "evcharge_core_datagrams_stale_total", "Out-of-order datagrams ignored"),
    ("acks_unknown", "evcharge_station_acks_unknown_total", "Station acks for unknown commands"),
    (
        "session_duplicates",
        "evcharge_station_session_duplicates_total",
        "Repeated session_complete messages ignored",
    ),
    (
        "sessions_unknown",
        "evcharge_station_sessions_unknown_total",
        "session_complete messages for unknown sessions",
    ),
    (
        "sessions_energy_bounded",
        "evcharge_sessions_energy_bounded_total",
        "Sessions billed less than their station reported (battery or power x time bound)",
    ),
    (
        "energy_excess_wh",
        "evcharge_energy_unbilled_wh_total",
        "Energy stations reported above a session's bound, never billed (Wh)",
    ),
)


# per-site gauges (energy.md): figures key -> metric name
SITE_GAUGES: Final = (
    ("limit_kw", "evcharge_site_limit_kw", "The site's power limit, kW"),
    ("allocated_kw", "evcharge_site_allocated_kw", "Power allocated to the site's sessions, kW"),
    ("drawn_kw", "evcharge_site_drawn_kw", "Power the site's sessions last reported drawing, kW"),
)


def _one(value: Any) -> dict[LabelValues, float]:
    return {(): float(value)} if isinstance(value, int | float) else {}


def add_state_metrics(registry: Registry, source: StateSource) -> None:
    """Gauges (and kept-elsewhere counters) read from the running broker at scrape time."""
    r = registry
    r.gauge(
        "evcharge_vehicles_connected",
        "Vehicles with at least one bound connection",
        lambda: {(): float(source.vehicles_connected())},
    )
    r.gauge(
        "evcharge_vehicle_connections_open",
        "Open vehicle TCP connections",
        lambda: {(): float(source.vehicle_connections_open())},
    )
    r.gauge(
        "evcharge_last_event_seq",
        "Seq of the last bus event",
        lambda: _one(source.core_stats().get("last_seq", 0)),
    )

    def by_state() -> dict[LabelValues, float]:
        states = source.core_stats().get("points_by_state") or {}
        return {(str(k),): float(v) for k, v in states.items()}

    r.gauge("evcharge_points", "Charging points by state (estado)", by_state, ("state",))
    for key, name, help_text in CORE_GAUGES:
        # (ignored below) mypy cannot type a lambda with a default argument
        r.gauge(name, help_text, lambda key=key: _one(source.core_stats().get(key)))  # type: ignore[misc]
    for key, name, help_text in CORE_COUNTERS:
        # (ignored below) mypy cannot type a lambda with a default argument
        r.counter_func(name, help_text, lambda key=key: _one(source.core_stats().get(key)))  # type: ignore[misc]

    def queues() -> dict[LabelValues, float]:
        lengths = source.core_stats().get("queues") or {}
        return {(str(k),): float(v) for k, v in lengths.items()}

    r.gauge(
        "evcharge_queue_length", "Reservations queued per point (points with a queue)",
        queues, ("point",),
    )  # fmt: skip

    def per_site(key: str) -> dict[LabelValues, float]:
        sites = source.core_stats().get("sites") or {}
        return {(str(name),): float(f[key]) for name, f in sites.items()}

    for key, name, help_text in SITE_GAUGES:
        # (ignored below) mypy cannot type a lambda with a default argument
        r.gauge(name, help_text, lambda key=key: per_site(key), ("site",))  # type: ignore[misc]
    r.counter_func(
        "evcharge_site_overdraw_total",
        "Status reports of a session drawing more than its limit (+5 %), per site",
        lambda: per_site("overdraws"),
        ("site",),
    )

    def zmq() -> dict[LabelValues, float]:
        return {
            (edge, outcome): float(n)
            for edge, figures in source.zmq_stats().items()
            for outcome, n in figures.items()
        }

    r.counter_func(
        "evcharge_zmq_messages_total",
        "ZeroMQ edge messages by edge (stations, bus, history) and outcome",
        zmq,
        ("edge", "outcome"),
    )
