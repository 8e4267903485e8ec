"""Configuration of the pure broker core (all durations in seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, tzinfo


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Rule parameters; the broker CLI maps its options onto these.

    ``queue_capacity``: reservations per point. ``hold_s``: how long a turn is
    held after ``max(created_at + eta, turn_started_at)``. ``offline_after_s``:
    minimum offline window (the real one is ``max(offline_after_s, 3 x interval_s)``).
    ``offline_grace_s``: how long an offline or faulted point keeps its queue and
    its running session. ``ack_timeout_s``: how long a station has to ack ``start``.
    ``heartbeat_s``: told to stations in ``welcome``. ``low_battery``: a ``bateria``
    report below this level publishes ``vehicle.low_battery``, once: not again for
    that vehicle until it reports ``low_battery_rearm`` or more. ``max_points``: new
    point ids past this many known points are dropped and counted. ``tz``: the
    site's zone for tariff restrictions. ``max_parking_s``: a vehicle still plugged
    in this long after charging is billed as if it left then (counted).
    ``metered_time_scale``: how much faster than real time metered (OCPP) chargers
    run; their energy is bounded by power x wall time x this (1 for real chargers,
    more only for simulators). ``max_reservations_per_address``: live reservations
    the connections of one network address may hold; past it ``rate_limited``.
    """

    queue_capacity: int = 5
    hold_s: float = 600.0
    offline_after_s: float = 6.0
    offline_grace_s: float = 120.0
    ack_timeout_s: float = 5.0
    heartbeat_s: float = 1.0
    low_battery: float = 20.0
    max_points: int = 1_000_000
    low_battery_rearm: float = 25.0
    #: the site's time zone: tariff time-of-day, date and weekday restrictions
    tz: tzinfo = UTC
    #: parking (a vehicle plugged in after charging) is billed at most this long
    max_parking_s: float = 12 * 3600.0
    metered_time_scale: float = 1.0
    max_reservations_per_address: int = 8
