"""The spatial index returns exactly what a brute-force haversine sort returns."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.geoindex import GeoIndex
from common.geo import haversine_km

lat_s = st.floats(min_value=-90.0, max_value=90.0, allow_nan=False)
lon_s = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)


def brute(
    pts: dict[str, tuple[float, float]], lat: float, lon: float, k: int, max_km: float | None
) -> list[tuple[float, str]]:
    hits = sorted((haversine_km(lat, lon, a, b), pid) for pid, (a, b) in pts.items())
    return [h for h in hits if max_km is None or h[0] <= max_km][:k]


@st.composite
def scenes(draw: st.DrawFn) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Points either spread over the globe or clustered (with duplicates) near a centre."""
    n = draw(st.integers(min_value=0, max_value=300))
    clat, clon = draw(lat_s), draw(lon_s)
    spread = draw(st.sampled_from([0.001, 0.05, 1.0, 30.0, 360.0]))
    seed = draw(st.integers(min_value=0, max_value=2**32))
    rng = random.Random(seed)
    pts: dict[str, tuple[float, float]] = {}
    for i in range(n):
        lat = max(-90.0, min(90.0, clat + rng.uniform(-spread, spread) / 2))
        lon = ((clon + rng.uniform(-spread, spread) + 180.0) % 360.0) - 180.0
        if i and rng.random() < 0.05:  # exact duplicates: ties broken by id
            lat, lon = pts[f"P{rng.randrange(i):04d}"]
        pts[f"P{i:04d}"] = (lat, lon)
    qlat = draw(st.one_of(lat_s, st.just(clat)))
    qlon = draw(st.one_of(lon_s, st.just(clon)))
    return pts, qlat, qlon


@settings(max_examples=200, deadline=None)
@given(
    scenes(),
    st.integers(min_value=1, max_value=20),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=25000.0)),
)
def test_nearest_equals_brute_force(
    scene: tuple[dict[str, tuple[float, float]], float, float], k: int, max_km: float | None
) -> None:
    pts, qlat, qlon = scene
    g = GeoIndex()
    for pid, (lat, lon) in pts.items():
        g.put(pid, lat, lon)
    assert g.nearest(qlat, qlon, k, max_km) == brute(pts, qlat, qlon, k, max_km)


@settings(max_examples=50, deadline=None)
@given(scenes(), st.integers(min_value=0, max_value=2**32))
def test_moves_and_removals_stay_exact(
    scene: tuple[dict[str, tuple[float, float]], float, float], seed: int
) -> None:
    pts, qlat, qlon = scene
    rng = random.Random(seed)
    g = GeoIndex()
    for pid, (lat, lon) in pts.items():
        g.put(pid, lat, lon)
    for pid in list(pts):
        r = rng.random()
        if r < 0.2:
            g.remove(pid)
            del pts[pid]
        elif r < 0.4:
            pts[pid] = (rng.uniform(-90, 90), rng.uniform(-180, 180))
            g.put(pid, *pts[pid])
    assert len(g) == len(pts)
    assert g.nearest(qlat, qlon, 10) == brute(pts, qlat, qlon, 10, None)


def test_large_clustered_set_is_exact_and_filter_skips_rejected() -> None:
    rng = random.Random(7)
    g = GeoIndex()
    pts = {}
    for i in range(5000):
        pts[f"C{i:05d}"] = (-12.9 + rng.uniform(-0.2, 0.2), -38.5 + rng.uniform(-0.2, 0.2))
        g.put(f"C{i:05d}", *pts[f"C{i:05d}"])
    for _ in range(50):
        q = (-12.9 + rng.uniform(-0.3, 0.3), -38.5 + rng.uniform(-0.3, 0.3))
        assert g.nearest(*q, 10) == brute(pts, *q, 10, None)
    even = {p: v for p, v in pts.items() if int(p[1:]) % 2 == 0}
    got = g.nearest(-12.9, -38.5, 7, None, lambda p: int(p[1:]) % 2 == 0)
    assert got == brute(even, -12.9, -38.5, 7, None)


def test_within_lists_everything_in_radius_sorted() -> None:
    g = GeoIndex()
    g.put("a", 0.0, 0.0)
    g.put("b", 0.0, 1.0)
    g.put("c", 0.0, 2.0)
    assert [p for _d, p in g.within(0.0, 0.0)] == ["a", "b", "c"]
    assert [p for _d, p in g.within(0.0, 0.0, 120.0)] == ["a", "b"]
    assert "a" in g and "z" not in g


def test_empty_and_zero_k() -> None:
    g = GeoIndex()
    assert g.nearest(0.0, 0.0, 5) == []
    g.put("a", 10.0, 10.0)
    assert g.nearest(0.0, 0.0, 0) == []
    g.remove("a")
    g.remove("a")
    assert g.nearest(0.0, 0.0, 5) == [] and len(g) == 0
