"""The spatial index returns exactly what a brute-force haversine sort returns.

And exactly what the index before the dot-product search returned
(:mod:`tests.support.geoindex_before`): same points, same order, the same bits in
every distance.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.geoindex import GeoIndex
from common.geo import haversine_km
from tests.support.geoindex_before import GeoIndex as GeoIndexBefore

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
def test_queries_near_each_other_stay_exact_through_moves(
    scene: tuple[dict[str, tuple[float, float]], float, float],
    k: int,
    max_km: float | None,
    jitter: float,
    seed: int,
) -> None:
    """Queries near each other, filtered or not, and a move onto the query and a removal."""
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
    """Every query position twice, off-centre in its cell, for several k."""
    rng = random.Random(7)
    pts = {f"P{i:05d}": (rng.uniform(-13.0, -12.0), rng.uniform(-39.0, -38.0)) for i in range(1500)}
    g = indexed(pts)
    queries = [(rng.uniform(-13.1, -11.9), rng.uniform(-39.1, -37.9)) for _ in range(60)]
    for k in (1, 10, 40):
        for lat, lon in queries + queries:
            assert g.nearest(lat, lon, k) == brute(pts, lat, lon, k, None)


# --- the same answers as the index before the dot-product search ------------------------


def bits(hits: list[tuple[float, str]]) -> list[tuple[str, str]]:
    """Hits with each distance as its exact bits (``==`` would let 0.0 equal -0.0)."""
    return [(d.hex(), pid) for d, pid in hits]


@st.composite
def hard_scenes(draw: st.DrawFn) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Points where dot products tie or lose precision: microscopic clusters (ties within
    rounding), the poles, the antimeridian, and queries at a point, its antipode or a pole."""
    n = draw(st.integers(min_value=0, max_value=200))
    where = draw(
        st.sampled_from(
            [(0.0, 0.0), (89.9999, 10.0), (-90.0, 0.0), (12.5, 179.99999), (-12.9, -38.5)]
        )
    )
    spread = draw(st.sampled_from([0.0, 1e-12, 1e-9, 1e-7, 1e-5, 0.01]))
    seed = draw(st.integers(min_value=0, max_value=2**32))
    rng = random.Random(seed)
    pts: dict[str, tuple[float, float]] = {}
    for i in range(n):
        lat = max(-90.0, min(90.0, where[0] + rng.uniform(-spread, spread)))
        lon = ((where[1] + rng.uniform(-spread, spread) + 180.0) % 360.0) - 180.0
        if rng.random() < 0.1:  # a few far away (the other side of the globe included)
            lat, lon = rng.uniform(-90.0, 90.0), rng.uniform(-180.0, 180.0)
        pts[f"H{i:04d}"] = (lat, lon)
    kind = draw(st.sampled_from(["centre", "point", "antipode", "pole", "anywhere"]))
    qlat, qlon = where
    if kind == "point" and pts:
        qlat, qlon = pts[draw(st.sampled_from(sorted(pts)))]
    elif kind == "antipode":
        qlat, qlon = -where[0], ((where[1] + 360.0) % 360.0) - 180.0
    elif kind == "pole":
        qlat, qlon = draw(st.sampled_from([90.0, -90.0])), draw(lon_s)
    elif kind == "anywhere":
        qlat, qlon = draw(lat_s), draw(lon_s)
    return pts, qlat, qlon


def _compare_with_before(
    scene: tuple[dict[str, tuple[float, float]], float, float],
    k: int,
    max_km: float | None,
    seed: int,
) -> None:
    pts, qlat, qlon = scene
    rng = random.Random(seed)
    new, old = GeoIndex(), GeoIndexBefore()
    for pid, (lat, lon) in pts.items():
        new.put(pid, lat, lon)
        old.put(pid, lat, lon)
    rejected = {pid for pid in pts if rng.random() < 0.3}

    def accept(pid: str) -> bool:
        return pid not in rejected

    for _ in range(3):  # the old index answers a repeated cell from cached candidates
        for filt in (None, accept):
            got = new.nearest(qlat, qlon, k, max_km, filt)
            assert bits(got) == bits(old.nearest(qlat, qlon, k, max_km, filt))
            kept = {p: v for p, v in pts.items() if filt is None or filt(p)}
            assert bits(got) == bits(brute(kept, qlat, qlon, k, max_km))
        if pts:  # a move and a removal, applied to both
            moved = rng.choice(sorted(pts))
            pts[moved] = (qlat + rng.uniform(-1e-6, 1e-6), qlon)
            pts[moved] = (max(-90.0, min(90.0, pts[moved][0])), qlon)
            new.put(moved, *pts[moved])
            old.put(moved, *pts[moved])
            gone = rng.choice(sorted(pts))
            del pts[gone]
            new.remove(gone)
            old.remove(gone)
    assert bits(new.within(qlat, qlon, max_km)) == bits(old.within(qlat, qlon, max_km))


@settings(max_examples=200, deadline=None)
@given(
    scenes(),
    st.integers(min_value=1, max_value=120),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=25000.0)),
    st.integers(min_value=0, max_value=2**32),
)
def test_same_answers_as_the_index_before(
    scene: tuple[dict[str, tuple[float, float]], float, float],
    k: int,
    max_km: float | None,
    seed: int,
) -> None:
    _compare_with_before(scene, k, max_km, seed)


@settings(max_examples=200, deadline=None)
@given(
    hard_scenes(),
    st.integers(min_value=1, max_value=30),
    st.one_of(
        st.none(),
        st.floats(min_value=0.0, max_value=1e-6),
        st.floats(min_value=0.0, max_value=25000.0),
    ),
    st.integers(min_value=0, max_value=2**32),
)
def test_same_answers_as_the_index_before_where_dot_products_tie(
    scene: tuple[dict[str, tuple[float, float]], float, float],
    k: int,
    max_km: float | None,
    seed: int,
) -> None:
    _compare_with_before(scene, k, max_km, seed)


def test_same_answers_as_the_index_before_over_a_moving_fleet() -> None:
    """10,000 points like the benchmark's, queries from new positions, some points filtered."""
    rng = random.Random(11)
    new, old = GeoIndex(), GeoIndexBefore()
    pts = {
        f"BP{i:06d}": (rng.uniform(-13.47, -12.47), rng.uniform(-39.0, -38.0))
        for i in range(10_000)
    }
    for pid, (lat, lon) in pts.items():
        new.put(pid, lat, lon)
        old.put(pid, lat, lon)
    busy = {pid for pid in pts if rng.random() < 0.2}

    def accept(pid: str) -> bool:
        return pid not in busy

    for i in range(400):
        lat, lon = rng.uniform(-13.6, -12.3), rng.uniform(-39.1, -37.9)
        k = (10, 1, 101)[i % 3]
        filt = accept if i % 2 else None
        max_km = (None, 5.0)[i % 5 == 0]
        assert bits(new.nearest(lat, lon, k, max_km, filt)) == bits(
            old.nearest(lat, lon, k, max_km, filt)
        )


@settings(max_examples=50, deadline=None)
@given(scenes(), st.integers(min_value=1, max_value=20))
def test_load_answers_as_puts_do(
    scene: tuple[dict[str, tuple[float, float]], float, float], k: int
) -> None:
    """A snapshot loaded at once (one rebuild) answers exactly as point-by-point inserts."""
    pts, qlat, qlon = scene
    loaded = GeoIndex()
    loaded.load((pid, lat, lon) for pid, (lat, lon) in pts.items())
    assert len(loaded) == len(pts)
    assert bits(loaded.nearest(qlat, qlon, k)) == bits(indexed(pts).nearest(qlat, qlon, k))
    assert bits(loaded.nearest(qlat, qlon, k)) == bits(brute(pts, qlat, qlon, k, None))
