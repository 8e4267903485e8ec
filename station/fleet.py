"""A fleet: N simulated stations placed deterministically around a center.

Placement is uniform over the disc of ``radius_km`` (radius ``r * sqrt(u)``,
angle ``2 pi v`` from ``random.Random(seed)``), converted to degrees with the
local metres-per-degree of the center; ids are ``PREFIX0001``, ``PREFIX0002``...
The same arguments always give the same fleet.
"""

from __future__ import annotations

import random

from common.geo import random_position
from station.sim import Charger


def station_id(prefix: str, number: int) -> str:
    """``PREFIX0001`` style id (at least four digits)."""
    return f"{prefix}{number:04d}"


def place(
    count: int, center: tuple[float, float], radius_km: float, seed: int
) -> list[tuple[float, float]]:
    """``count`` (latitude, longitude) pairs inside ``radius_km`` of ``center``."""
    rng = random.Random(seed)
    return [random_position(rng, center, radius_km) for _ in range(count)]


def make_fleet(
    count: int,
    center: tuple[float, float],
    radius_km: float,
    prefix: str,
    seed: int,
    power_kw: float,
    price_kwh: float,
    speed: float,
) -> list[Charger]:
    """The chargers of a fleet (pure, deterministic)."""
    return [
        Charger(
            point_id=station_id(prefix, n),
            latitude=lat,
            longitude=lon,
            power_kw=power_kw,
            price_kwh=price_kwh,
            speed=speed,
        )
        for n, (lat, lon) in enumerate(place(count, center, radius_km, seed), start=1)
    ]
