"""Haversine distances on a sphere of radius 6371 km."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.geo import EARTH_RADIUS_KM, haversine_km

lats = st.floats(min_value=-90, max_value=90)
lons = st.floats(min_value=-180, max_value=180)

# a shared, loaded machine must not turn slow data generation into failures
SLOW_OK = [HealthCheck.too_slow]


def test_radius_is_6371() -> None:
    assert EARTH_RADIUS_KM == 6371.0


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        ((0.0, 0.0), (0.0, 0.0), 0.0),
        ((0.0, 0.0), (0.0, 1.0), 2 * math.pi * 6371 / 360),  # one degree on the equator
        ((0.0, 0.0), (1.0, 0.0), 2 * math.pi * 6371 / 360),  # one degree on a meridian
        ((90.0, 0.0), (-90.0, 0.0), math.pi * 6371),  # pole to pole
        ((0.0, 0.0), (0.0, 180.0), math.pi * 6371),  # antipodes on the equator
        ((0.0, 0.0), (90.0, 0.0), math.pi * 6371 / 2),  # equator to pole
        ((0.0, 179.5), (0.0, -179.5), 2 * math.pi * 6371 / 360),  # across the date line
    ],
)
def test_exact_distances(a: tuple[float, float], b: tuple[float, float], km: float) -> None:
    assert haversine_km(*a, *b) == pytest.approx(km, abs=1e-9)


def test_known_city_distances() -> None:
    # Paris - London, a classic haversine check: 343.56 km with R = 6371
    assert haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.556, abs=0.01)
    # New York - Los Angeles: 3935.7 km great-circle
    assert haversine_km(40.7128, -74.0060, 34.0522, -118.2437) == pytest.approx(3935.7, abs=0.5)


def test_small_distances_keep_precision() -> None:
    # 1 m apart: what the 3-decimal "distance" of the points list shows
    assert round(haversine_km(-12.266, -38.966, -12.266 + 1 / 111195, -38.966), 3) == 0.001


@given(lats, lons, lats, lons)
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_symmetric_and_bounded(lat1: float, lon1: float, lat2: float, lon2: float) -> None:
    d = haversine_km(lat1, lon1, lat2, lon2)
    assert d == pytest.approx(haversine_km(lat2, lon2, lat1, lon1), abs=1e-6)
    assert 0.0 <= d <= math.pi * EARTH_RADIUS_KM + 1e-6


@given(lats, lons, lats, lons, lats, lons)
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_triangle_inequality(
    lat1: float, lon1: float, lat2: float, lon2: float, lat3: float, lon3: float
) -> None:
    direct = haversine_km(lat1, lon1, lat3, lon3)
    assert (
        direct <= haversine_km(lat1, lon1, lat2, lon2) + haversine_km(lat2, lon2, lat3, lon3) + 1e-6
    )
