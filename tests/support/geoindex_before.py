"""The spatial index as it was before the dot-product search: a reference for its tests.

The current :mod:`broker.core.geoindex` must answer every query exactly as this
one does (same points, same order, bit-identical distances); this copy is kept
unchanged for that comparison and is not used by any program.

The original description follows.

Spatial index: k nearest points within r km, exact, in pure Python.

Points live in a lat/lon grid whose cells are roughly square in kilometres
(the longitude width is scaled by the cosine of the data's middle latitude)
and sized so that a cell holds about :data:`TARGET_PER_CELL` points; the grid
is rebuilt when the number of points has doubled or shrunk to a quarter.

A query visits rings of cells around the query's cell (ring r: the cells at
Chebyshev distance r). After ring r every unvisited point lies outside the
visited block, so its great-circle distance is at least

* the latitude gap to the block's north or south edge (``R * dphi``), or
* the cross-track distance to the block's east or west meridian:
  ``R * asin(cos(phi0) * sin(min(dlambda, 90 deg)))``.

The search stops when ``k`` candidates are strictly closer than that bound
(minus a safety margin for rounding) or when the bound exceeds the radius.
Distances are computed with exactly the arithmetic of
:func:`common.geo.haversine_km`, so results (sorted by distance, then id) are
identical to a brute-force sort. Far from any data (or when the block would
span half the globe) the query falls back to a brute-force scan.

Candidates per cell (the fast path, measured in tests/bench/bench_read_path.py:
about 3x cheaper than the ring search at 10,000 points): vehicles ask from the
same places again and again, so for a grid cell and a ``k`` the index keeps every
point within ``radius`` of the cell's centre, where ``radius`` is the centre's
k-th nearest distance plus twice the cell's half-diagonal. A query at distance
``e`` from that centre then sees, among those candidates, every point within
``radius - e`` of itself (triangle inequality on the sphere), so its answer is
exact when its k-th accepted distance (or its ``max_km``) is within that; else,
rarely (many points filtered out, a huge ``k``), the ring search answers.
Candidate cells are grid cells split 3 x 3 (a smaller half-diagonal, fewer
candidates). A cell gets its candidates on its second query (building them
costs about three ring searches, so one-off queries keep the ring search). Any
insert, move or removal drops the cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from common.geo import EARTH_RADIUS_KM, haversine_km

TARGET_PER_CELL: Final = 1.0
_MIN_REBUILD: Final = 64
_MIN_CELL_DEG: Final = 1e-4
_MAX_CELL_DEG: Final = 10.0
_MARGIN_REL: Final = 1e-6  # on squared chords; covers every rounding difference
_MARGIN_ABS: Final = 1e-20
_MARGIN_KM: Final = 1e-6  # 1 mm, against rounding in the block bounds
_CACHED_CELLS: Final = 4096  # (cell, k) candidate lists kept (up to ~14 MiB); dropped when full
_FEW_MORE: Final = 8  # up to k + this many points, a plain scan is cheapest
_FINE: Final = 3  # candidate cells are grid cells split 3 x 3: fewer candidates each
_MAX_CANDIDATES: Final = 1024  # a cell with more candidates than this is not cached

# (x, y, z on the unit sphere, point_id, latitude, longitude)
_Entry = tuple[float, float, float, str, float, float]
# a cell's cached candidates: (centre latitude, centre longitude, radius km, entries)
_Candidates = tuple[float, float, float, list[_Entry]]


def _unit(latitude: float, longitude: float) -> tuple[float, float, float]:
    p = math.radians(latitude)
    lam = math.radians(longitude)
    c = math.cos(p)
    return c * math.cos(lam), c * math.sin(lam), math.sin(p)


def _chord2(km: float) -> float:
    """Squared chord (unit sphere) of a great-circle distance; 4.0 beyond the antipode."""
    if km >= math.pi * EARTH_RADIUS_KM:
        return 4.0
    return (2.0 * math.sin(km / EARTH_RADIUS_KM / 2.0)) ** 2


class GeoIndex:
    """Exact k-nearest-neighbour queries by haversine distance over a mutable point set."""

    __slots__ = (
        "_asked",
        "_cells",
        "_cs_lat",
        "_cs_lon",
        "_entries",
        "_n_built",
        "_ncols",
        "_near",
        "_nrows",
        "_trig",
    )

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, _Entry]] = {}
        # per point: radians(latitude), its cosine, longitude (for the exact haversine)
        self._trig: dict[str, tuple[float, float, float]] = {}
        self._cells: dict[int, list[_Entry]] = {}
        # (cell key, k) -> candidates, or None where caching does not pay
        self._near: dict[tuple[int, int], _Candidates | None] = {}
        self._asked: set[tuple[int, int]] = set()  # asked from once, no candidates yet
        self._n_built = 0
        self._configure(10.0, 10.0)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, point_id: object) -> bool:
        return point_id in self._entries

    # --- mutation ------------------------------------------------------------------

    def put(self, point_id: str, latitude: float, longitude: float) -> None:
        """Insert ``point_id`` or move it to a new position."""
        old = self._entries.get(point_id)
        if old is not None:
            if old[1][4] == latitude and old[1][5] == longitude:
                return
            self._cells[old[0]].remove(old[1])
            if not self._cells[old[0]]:
                del self._cells[old[0]]
        self._clear_cache()
        x, y, z = _unit(latitude, longitude)
        entry: _Entry = (x, y, z, point_id, latitude, longitude)
        p = math.radians(latitude)
        self._trig[point_id] = (p, math.cos(p), longitude)
        key = self._key(latitude, longitude)
        self._entries[point_id] = (key, entry)
        self._cells.setdefault(key, []).append(entry)
        n = len(self._entries)
        if n >= _MIN_REBUILD and (n >= 2 * self._n_built or 4 * n < self._n_built):
            self._rebuild()

    def remove(self, point_id: str) -> None:
        """Forget ``point_id`` (no error when absent)."""
        old = self._entries.pop(point_id, None)
        if old is None:
            return
        del self._trig[point_id]
        self._clear_cache()
        self._cells[old[0]].remove(old[1])
        if not self._cells[old[0]]:
            del self._cells[old[0]]

    # --- queries --------------------------------------------------------------------

    def nearest(
        self,
        latitude: float,
        longitude: float,
        k: int,
        max_km: float | None = None,
        accept: Callable[[str], bool] | None = None,
    ) -> list[tuple[float, str]]:
        """Up to ``k`` ``(distance_km, id)`` pairs, nearest first (ties by id).

        ``max_km`` (None = unlimited) keeps only points at most that far;
        ``accept`` filters ids (rejected points are skipped, not counted).
        """
        if k <= 0 or not self._entries:
            return []
        limit = math.inf if max_km is None else max_km
        if 3 * self._cs_lon >= 180.0 or len(self._entries) <= k + _FEW_MORE:
            return self._brute(latitude, longitude, k, limit, accept)
        cached = self._from_candidates(latitude, longitude, k, limit, accept)
        if cached is not None:
            return cached
        return self._search(latitude, longitude, k, limit, accept)

    def _from_candidates(
        self,
        latitude: float,
        longitude: float,
        k: int,
        limit: float,
        accept: Callable[[str], bool] | None,
    ) -> list[tuple[float, str]] | None:
        """The answer from the cell's cached candidates, or None when they cannot prove it."""
        key = (self._fine_key(latitude, longitude), k)
        if key in self._near:
            hit = self._near[key]
        elif key in self._asked:
            # asked from here before: worth the candidates (a build costs ~3 searches)
            if len(self._near) >= _CACHED_CELLS:
                self._clear_cache()
            hit = self._near[key] = self._candidates(key[0], k)
        else:
            if len(self._asked) >= _CACHED_CELLS:
                self._clear_cache()
            self._asked.add(key)
            return None
        if hit is None:
            return None
        c_lat, c_lon, radius, entries = hit
        covered = radius - haversine_km(latitude, longitude, c_lat, c_lon) - _MARGIN_KM
        if covered <= 0.0:
            return None
        lim2 = _chord2(limit) * (1.0 + _MARGIN_REL) + _MARGIN_ABS
        x0, y0, z0 = _unit(latitude, longitude)
        found: list[tuple[float, str]] = []
        append = found.append
        for x, y, z, pid, _lat, _lon in entries:
            dx = x - x0
            dy = y - y0
            dz = z - z0
            d2 = dx * dx + dy * dy + dz * dz
            if d2 <= lim2:
                append((d2, pid))
        found.sort()
        if accept is not None:
            # filter nearest first: only the points that can rank are asked about
            kept: list[tuple[float, str]] = []
            cut = math.inf
            for d2, pid in found:
                if d2 > cut:
                    break
                if accept(pid):
                    kept.append((d2, pid))
                    if len(kept) == k:
                        cut = d2 * (1.0 + _MARGIN_REL) + _MARGIN_ABS
            found = kept
        exact = self._finish(found, latitude, longitude, k, limit)
        if (len(exact) == k and exact[-1][0] <= covered) or limit <= covered:
            return exact
        return None

    def _candidates(self, key: int, k: int) -> _Candidates | None:
        """Every point within (k-th nearest + 2 x half-diagonal) of cell ``key``'s centre."""
        i, j = divmod(key, self._ncols * _FINE)
        fine_lat, fine_lon = self._cs_lat / _FINE, self._cs_lon / _FINE
        lat0 = i * fine_lat - 90.0
        lat1 = min(90.0, lat0 + fine_lat)
        lon0 = j * fine_lon - 180.0
        lon1 = lon0 + fine_lon
        c_lat, c_lon = (lat0 + lat1) / 2.0, (lon0 + lon1) / 2.0
        half = max(haversine_km(c_lat, c_lon, a, b) for a in (lat0, lat1) for b in (lon0, lon1))
        kth = self._search(c_lat, c_lon, k, math.inf, None)
        radius = kth[-1][0] + 2.0 * half + _MARGIN_KM if len(kth) == k else math.inf
        within = self._search(c_lat, c_lon, len(self._entries), radius, None)
        if len(within) > _MAX_CANDIDATES:
            return None
        # fresh tuples and floats allocated together: the query reads neighbouring memory
        entries = [
            (x + 0.0, y + 0.0, z + 0.0, pid, lat, lon)
            for x, y, z, pid, lat, lon in (self._entries[pid][1] for _d, pid in within)
        ]
        return c_lat, c_lon, radius, entries

    def _search(
        self,
        latitude: float,
        longitude: float,
        k: int,
        limit: float,
        accept: Callable[[str], bool] | None,
    ) -> list[tuple[float, str]]:
        """The ring search (see the module docstring)."""
        lim2 = _chord2(limit) * (1.0 + _MARGIN_REL) + _MARGIN_ABS
        limit_hi = limit * (1.0 + _MARGIN_REL) + _MARGIN_KM
        cs_lat, cs_lon, nrows, ncols = self._cs_lat, self._cs_lon, self._nrows, self._ncols
        x0, y0, z0 = _unit(latitude, longitude)
        c1 = max(0.0, math.cos(math.radians(latitude)))
        i0 = min(int((latitude + 90.0) / cs_lat), nrows - 1)
        j0 = min(int((longitude + 180.0) / cs_lon), ncols - 1)
        cells = self._cells
        total = len(self._entries)
        max_cells = 4 * len(cells) + 64
        found: list[tuple[float, str]] = []
        append = found.append
        sin, asin, radians, sqrt = math.sin, math.asin, math.radians, math.sqrt
        inf = math.inf
        two_r = 2.0 * EARTH_RADIUS_KM
        kpd = EARTH_RADIUS_KM * math.pi / 180.0

        def lon_km(gap_deg: float) -> float:
            # cross-track distance to a meridian gap_deg away (>= 90 deg: to the pole)
            return EARTH_RADIUS_KM * asin(c1 * sin(radians(min(gap_deg, 90.0))))

        # the visited block is rows ilo..ihi x columns jlo..jhi: first the 3 x 3 cells
        # around the query, then one side at a time, always the side nearest to the
        # query, so that the block's edges stay about equidistant from it
        ilo, ihi, jlo, jhi = max(i0 - 1, 0), min(i0 + 1, nrows - 1), j0 - 1, j0 + 1
        keys: list[int] = [
            i * ncols + (j % ncols) for i in range(ilo, ihi + 1) for j in range(jlo, jhi + 1)
        ]
        south = (latitude - (ilo * cs_lat - 90.0)) * kpd if ilo > 0 else inf
        north = ((ihi + 1) * cs_lat - 90.0 - latitude) * kpd if ihi + 1 < nrows else inf
        west = lon_km(longitude - (jlo * cs_lon - 180.0))
        east = lon_km((jhi + 1) * cs_lon - 180.0 - longitude)
        seen = 0
        kth = inf
        dirty = False
        while True:
            for key in keys:
                cell = cells.get(key)
                if cell is None:
                    continue
                seen += len(cell)
                for x, y, z, pid, _lat, _lon in cell:
                    dx = x - x0
                    dy = y - y0
                    dz = z - z0
                    d2 = dx * dx + dy * dy + dz * dz
                    if d2 <= lim2 and (accept is None or accept(pid)):
                        append((d2, pid))
                        dirty = True
            if seen >= total:
                break
            # every unvisited point is at least `bound` km away
            bound = min(south, north, west, east)
            if bound > limit_hi:
                break
            if len(found) >= k:
                if dirty:
                    found.sort()
                    kth = two_r * asin(min(1.0, sqrt(found[k - 1][0]) / 2.0))
                    dirty = False
                if kth * (1.0 + _MARGIN_REL) + _MARGIN_KM < bound:
                    break
            width = jhi - jlo + 1
            if (width + 1) * cs_lon >= 180.0 or (ihi - ilo + 2) * (width + 1) > max_cells:
                # far from the data: growing the block would cost more than every point
                return self._brute(latitude, longitude, k, limit, accept)
            if bound == south:
                ilo -= 1
                base = ilo * ncols
                keys = [base + (j % ncols) for j in range(jlo, jhi + 1)]
                south = (latitude - (ilo * cs_lat - 90.0)) * kpd if ilo > 0 else inf
            elif bound == north:
                ihi += 1
                base = ihi * ncols
                keys = [base + (j % ncols) for j in range(jlo, jhi + 1)]
                north = ((ihi + 1) * cs_lat - 90.0 - latitude) * kpd if ihi + 1 < nrows else inf
            elif bound == west:
                jlo -= 1
                col = jlo % ncols
                keys = [i * ncols + col for i in range(ilo, ihi + 1)]
                west = lon_km(longitude - (jlo * cs_lon - 180.0))
            else:
                jhi += 1
                col = jhi % ncols
                keys = [i * ncols + col for i in range(ilo, ihi + 1)]
                east = lon_km((jhi + 1) * cs_lon - 180.0 - longitude)
        if dirty:
            found.sort()
        return self._finish(found, latitude, longitude, k, limit)

    def _finish(
        self,
        found: list[tuple[float, str]],
        latitude: float,
        longitude: float,
        k: int,
        limit: float,
    ) -> list[tuple[float, str]]:
        """Exact haversine for every candidate (sorted by chord) that may rank in the first k."""
        if not found:
            return []
        cut = found[min(k, len(found)) - 1][0] * (1.0 + _MARGIN_REL) + _MARGIN_ABS
        trig = self._trig
        exact: list[tuple[float, str]] = []
        sin, asin, sqrt, radians = math.sin, math.asin, math.sqrt, math.radians
        # the arithmetic of common.geo.haversine_km, inlined (bit-identical results)
        p1 = radians(latitude)
        cp1 = math.cos(p1)
        two_r = 2 * EARTH_RADIUS_KM
        for d2, pid in found:
            if d2 > cut:
                break
            p2, cp2, lon2 = trig[pid]
            a = sin((p2 - p1) / 2) ** 2 + cp1 * cp2 * sin(radians(lon2 - longitude) / 2) ** 2
            d = two_r * asin(min(1.0, sqrt(a)))
            if d <= limit:
                exact.append((d, pid))
        exact.sort()
        return exact[:k]

    def within(
        self, latitude: float, longitude: float, max_km: float | None = None
    ) -> list[tuple[float, str]]:
        """Every ``(distance_km, id)`` within ``max_km`` (None = all), nearest first."""
        limit = math.inf if max_km is None else max_km
        return self._brute(latitude, longitude, len(self._entries), limit, None)

    # --- internals ------------------------------------------------------------------

    def _brute(
        self,
        latitude: float,
        longitude: float,
        k: int,
        limit: float,
        accept: Callable[[str], bool] | None,
    ) -> list[tuple[float, str]]:
        found: list[tuple[float, str]] = []
        sin, asin, sqrt, radians = math.sin, math.asin, math.sqrt, math.radians
        # the arithmetic of common.geo.haversine_km, inlined as in _finish (bit-identical)
        p1 = radians(latitude)
        cp1 = math.cos(p1)
        two_r = 2 * EARTH_RADIUS_KM
        for pid, (p2, cp2, lon2) in self._trig.items():
            a = sin((p2 - p1) / 2) ** 2 + cp1 * cp2 * sin(radians(lon2 - longitude) / 2) ** 2
            d = two_r * asin(min(1.0, sqrt(a)))
            if d <= limit and (accept is None or accept(pid)):
                found.append((d, pid))
        found.sort()
        return found[:k]

    def _clear_cache(self) -> None:
        self._near.clear()
        self._asked.clear()

    def _fine_key(self, latitude: float, longitude: float) -> int:
        """The cell of the candidate cache: a grid cell split _FINE x _FINE."""
        ncols = self._ncols * _FINE
        i = min(int((latitude + 90.0) / self._cs_lat * _FINE), self._nrows * _FINE - 1)
        j = min(int((longitude + 180.0) / self._cs_lon * _FINE), ncols - 1)
        return i * ncols + j

    def _key(self, latitude: float, longitude: float) -> int:
        i = min(int((latitude + 90.0) / self._cs_lat), self._nrows - 1)
        j = min(int((longitude + 180.0) / self._cs_lon), self._ncols - 1)
        return i * self._ncols + j

    def _configure(self, cs_lat: float, cs_lon: float) -> None:
        self._nrows = max(1, round(180.0 / cs_lat))
        self._ncols = max(1, round(360.0 / cs_lon))
        self._cs_lat = 180.0 / self._nrows
        self._cs_lon = 360.0 / self._ncols

    def _rebuild(self) -> None:
        entries = [e for _k, e in self._entries.values()]
        n = len(entries)
        lats = [e[4] for e in entries]
        lons = [e[5] for e in entries]
        lat_span = max(max(lats) - min(lats), _MIN_CELL_DEG)
        lon_span = max(max(lons) - min(lons), _MIN_CELL_DEG)
        mid = math.radians((max(lats) + min(lats)) / 2)
        cos_mid = max(math.cos(mid), 0.05)
        side = math.sqrt(lat_span * lon_span * cos_mid * TARGET_PER_CELL / n)
        cs_lat = min(max(side, _MIN_CELL_DEG), _MAX_CELL_DEG)
        cs_lon = min(cs_lat / cos_mid, 3 * _MAX_CELL_DEG)
        self._configure(cs_lat, cs_lon)
        self._cells = {}
        self._entries = {}
        self._clear_cache()
        # fresh objects allocated cell by cell: a query then reads neighbouring memory
        keyed = sorted(((self._key(e[4], e[5]), e) for e in entries), key=lambda ke: ke[0])
        for key, (x, y, z, pid, lat, lon) in keyed:
            e = (x + 0.0, y + 0.0, z + 0.0, pid, lat, lon)
            self._entries[pid] = (key, e)
            self._cells.setdefault(key, []).append(e)
        self._n_built = n
