"""The spatial index returns exactly what a brute-force haversine sort returns."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.geoindex import GeoIndex
from common.geo import haversine_km

lat_s = st.floats(min_value=-90.0, max_value=90.0, allow_nan=False)
lon_s = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)


def indexed(pts: dict[str, tuple[float, float]]) -> GeoIndex:
    """A GeoIndex holding every point of ``pts``."""
    g = GeoIndex()
    for pid, (lat, lon) in pts.items():
        g.put(pid, lat, lon)
    return g


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
    g = indexed(pts)
    assert g.nearest(qlat, qlon, k, max_km) == brute(pts, qlat, qlon, k, max_km)


@settings(max_examples=50, deadline=None)
@given(scenes(), st.integers(min_value=0, max_value=2**32))
def test_moves_and_removals_stay_exact(
    scene: tuple[dict[str, tuple[float, float]], float, float], seed: int
) -> None:
    pts, qlat, qlon = scene
    rng = random.Random(seed)
    g = indexed(pts)
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


@settings(max_examples=150, deadline=None)
@given(
    scenes(),
    st.integers(min_value=1, max_value=20),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=25000.0)),
    st.sampled_from([0.0, 1e-4, 0.01, 0.3, 5.0]),
    st.integers(min_value=0, max_value=2**32),
)
def test_repeated_queries_answered_from_cached_candidates_stay_exact(
    scene: tuple[dict[str, tuple[float, float]], float, float],
    k: int,
    max_km: float | None,
    jitter: float,
    seed: int,
) -> None:
    """Queries near each other (the same candidate cell, warm), filtered or not, and moves."""
    pts, qlat, qlon = scene
    rng = random.Random(seed)
    g = indexed(pts)
    rejected = {pid for pid in pts if rng.random() < 0.3}

    def accept(pid: str) -> bool:
        return pid not in rejected

    def check() -> None:
        for _ in range(4):
            lat = max(-90.0, min(90.0, qlat + rng.uniform(-jitter, jitter)))
            lon = ((qlon + rng.uniform(-jitter, jitter) + 180.0) % 360.0) - 180.0
            assert g.nearest(lat, lon, k, max_km) == brute(pts, lat, lon, k, max_km)
            kept = {p: v for p, v in pts.items() if p not in rejected}
            assert g.nearest(lat, lon, k, max_km, accept) == brute(kept, lat, lon, k, max_km)

    check()
    if pts:
        moved = rng.choice(sorted(pts))
        pts[moved] = (qlat, qlon)  # onto the query: it must show up at once
        g.put(moved, qlat, qlon)
        check()
        gone = rng.choice(sorted(pts))
        del pts[gone]
        g.remove(gone)
        check()


def test_many_queries_over_a_dense_fleet_match_brute_force() -> None:
    """Every query position twice (the second from cached candidates), off-centre in its cell."""
    rng = random.Random(7)
    pts = {f"P{i:05d}": (rng.uniform(-13.0, -12.0), rng.uniform(-39.0, -38.0)) for i in range(1500)}
    g = indexed(pts)
    queries = [(rng.uniform(-13.1, -11.9), rng.uniform(-39.1, -37.9)) for _ in range(60)]
    for k in (1, 10, 40):
        for lat, lon in queries + queries:
            assert g.nearest(lat, lon, k) == brute(pts, lat, lon, k, None)
