"""A tiny metrics registry rendered in the Prometheus text exposition format.

Counters and histograms are plain dict updates (cheap on the hot path);
gauges are callbacks read at scrape time, so they never go stale.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Final

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


Metric = Counter | Gauge | Histogram


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
    """Every counter the broker keeps; gauges are added by the app that can read them."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.requests = r.counter(
            "evcharge_requests_total", "Vehicle requests by type and result", ("type", "result")
        )
        self.errors = r.counter("evcharge_errors_total", "Error replies by code", ("code",))
        self.datagrams = r.counter(
            "evcharge_datagrams_total", "Station status datagrams by outcome", ("outcome",)
        )
        self.events = r.counter(
            "evcharge_events_total", "Bus events published by topic", ("topic",)
        )
        self.connections = r.counter(
            "evcharge_vehicle_connections_total", "Vehicle TCP connections accepted"
        )
        self.latency = r.histogram(
            "evcharge_request_latency_seconds", "Time from request decoded to reply written"
        )
        self.commits = r.counter("evcharge_store_commits_total", "Store transactions committed")
        self.rejected = r.counter(
            "evcharge_rejected_total",
            "Input refused or dropped, by edge and reason",
            ("edge", "reason"),
        )
