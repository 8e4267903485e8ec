"""Geography: great-circle distance, a "LAT,LON" centre, random positions in a disc.

All on a sphere of radius 6371 km.
"""

from __future__ import annotations

import math
import random
from typing import Final

from common.errors import ConfigError

EARTH_RADIUS_KM: Final = 6371.0
KM_PER_DEG_LAT: Final = EARTH_RADIUS_KM * math.pi / 180.0
# Where the demo fleets stand (Feira de Santana, Bahia): `make run`'s and the
# compose stack's stations, and where a vehicle is unless told otherwise.
DEMO_CENTER: Final = (-12.2664, -38.9663)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance in km between two (latitude, longitude) points given in degrees."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def parse_center(text: str) -> tuple[float, float]:
    """``"LAT,LON"`` (spaces allowed) -> (lat, lon); raises ConfigError (field ``center``)."""
    try:
        lat_s, lon_s = text.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        raise ConfigError(
            f"expected LAT,LON, e.g. -12.2664,-38.9663, got {text!r}", field="center"
        ) from None
    if math.isnan(lat + lon) or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ConfigError(
            f"latitude must be in [-90, 90] and longitude in [-180, 180]: {text!r}",
            field="center",
        )
    return lat, lon


def random_position(
    rng: random.Random, center: tuple[float, float], radius_km: float
) -> tuple[float, float]:
    """A uniformly random point of the disc of ``radius_km`` around ``center``.

    Radius ``r * sqrt(u)``, angle ``2 pi v``, converted to degrees with the local
    kilometres per degree of the centre; rounded to 6 decimals (about 0.1 m).
    """
    lat0, lon0 = center
    km_per_deg_lon = KM_PER_DEG_LAT * max(0.01, math.cos(math.radians(lat0)))
    r = radius_km * math.sqrt(rng.random())
    theta = 2.0 * math.pi * rng.random()
    lat = max(-90.0, min(90.0, lat0 + r * math.cos(theta) / KM_PER_DEG_LAT))
    lon = (lon0 + r * math.sin(theta) / km_per_deg_lon + 180.0) % 360.0 - 180.0
    return round(lat, 6), round(lon, 6)
