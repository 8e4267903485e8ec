"""A fleet: N simulated stations placed deterministically around a center.

Placement is uniform over the disc of ``radius_km`` (radius ``r * sqrt(u)``,
angle ``2 pi v`` from ``random.Random(seed)``), converted to degrees with the
local metres-per-degree of the center; ids are ``PREFIX0001``, ``PREFIX0002``...
The same arguments always give the same fleet.
"""

from __future__ import annotations

import math
import random
from typing import Final

from station.sim import Charger

KM_PER_DEG_LAT: Final = 6371.0 * math.pi / 180.0


def station_id(prefix: str, number: int) -> str:
    """``PREFIX0001`` style id (at least four digits)."""
    return f"{prefix}{number:04d}"


def place(
    count: int, center: tuple[float, float], radius_km: float, seed: int
) -> list[tuple[float, float]]:
    """``count`` (latitude, longitude) pairs inside ``radius_km`` of ``center``."""
    rng = random.Random(seed)
    lat0, lon0 = center
    km_per_deg_lon = KM_PER_DEG_LAT * max(0.01, math.cos(math.radians(lat0)))
    spots: list[tuple[float, float]] = []
    for _ in range(count):
        r = radius_km * math.sqrt(rng.random())
        theta = 2.0 * math.pi * rng.random()
        lat = lat0 + r * math.cos(theta) / KM_PER_DEG_LAT
        lon = lon0 + r * math.sin(theta) / km_per_deg_lon
        lat = max(-90.0, min(90.0, lat))
        lon = (lon + 180.0) % 360.0 - 180.0
        spots.append((round(lat, 6), round(lon, 6)))
    return spots


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
