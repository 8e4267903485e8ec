"""Great-circle distance (haversine on a sphere of radius 6371 km)."""

from __future__ import annotations

import math
from typing import Final

EARTH_RADIUS_KM: Final = 6371.0
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
