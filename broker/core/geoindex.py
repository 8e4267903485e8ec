"""Spatial index: k nearest points within r km, exact, in pure Python.

Points live in a lat/lon grid whose cells are roughly square in kilometres
(the longitude width is scaled by the cosine of the data's middle latitude)
and sized so that a cell holds about :data:`TARGET_PER_CELL` points; the grid
is rebuilt when the number of points has doubled or shrunk to a quarter.

Every point is kept as a unit vector too. On the sphere the nearest points by
great-circle distance are those whose vectors have the largest dot product with
the query's (the cosine of the central angle): three multiplications and two
additions per point, no trigonometry. Only the winners get the exact haversine,
computed with exactly the arithmetic of :func:`common.geo.haversine_km`, so the
distances and the order (by distance, then id) are bit for bit those of a
brute-force sort.

Rounding: a dot product near 1 is exact to a few units of 2^-53 (absolute),
haversine distances to a few units relative, so two points whose haversine
distances compare one way cannot have dot products that compare the other way
by more than :data:`_DOT_MARGIN` (1e-12, thousands of times those errors). So the
winners are the accepted points up to the k-th largest dot product, plus every
point within that margin below it (a tie within about a metre at worst); the
exact distances then order them.

A query visits the 3 x 3 cells around the query's cell, then grows the visited
block one side at a time, always the side nearest to the query. After that
every unvisited point lies outside the block, so its great-circle distance is
at least

* the latitude gap to the block's north or south edge (``R * dphi``), or
* the cross-track distance to the block's east or west meridian:
  ``R * asin(cos(phi0) * sin(min(dlambda, 90 deg)))``.

The search stops when the k-th accepted dot product is larger, by twice the
margin, than the cosine of that bound (less 1 mm against rounding in the bound),
or when the bound exceeds the radius asked. Far from any data (or when the block
would span half the globe) the query scans every point.

There is no cache of answers or candidates: vehicles move, so no two queries
come from the same place, and the index costs the same for every query.
The structure holds no state of any caller (pure, synchronous, reusable by any
process that keeps a copy of the points).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Final

from common.geo import EARTH_RADIUS_KM

TARGET_PER_CELL: Final = 2.0
_MIN_REBUILD: Final = 64
_MIN_CELL_DEG: Final = 1e-4
_MAX_CELL_DEG: Final = 10.0
#: dot products this close are ordered by the exact distances (see the module docstring)
_DOT_MARGIN: Final = 1e-12
_MARGIN_KM: Final = 1e-6  # 1 mm, against rounding in the block bounds
_FEW_MORE: Final = 8  # up to k + this many points, a plain scan is cheapest
_DEG: Final = math.pi / 180.0  # math.radians(x) is exactly x * _DEG
_KM_PER_DEG: Final = EARTH_RADIUS_KM * _DEG  # km per degree of latitude

# (x, y, z on the unit sphere, point_id, radians(latitude), its cosine, longitude, latitude)
_Entry = tuple[float, float, float, str, float, float, float, float]
# (dot product with the query's vector, entry)
_Hit = tuple[float, _Entry]


def _unit(latitude: float, longitude: float) -> tuple[float, float, float]:
    p = math.radians(latitude)
    lam = math.radians(longitude)
    c = math.cos(p)
    return c * math.cos(lam), c * math.sin(lam), math.sin(p)


def _cos_of_km(km: float) -> float:
    """Cosine of the central angle of a great-circle distance (-1.0 beyond the antipode)."""
    if km >= math.pi * EARTH_RADIUS_KM:
        return -1.0
    return math.cos(max(km, 0.0) / EARTH_RADIUS_KM)


def _entry(point_id: str, latitude: float, longitude: float) -> _Entry:
    x, y, z = _unit(latitude, longitude)
    p = latitude * _DEG  # radians(latitude), as common.geo.haversine_km computes it
    return (x, y, z, point_id, p, math.cos(p), longitude, latitude)


def _walk(
    found: list[_Hit],
    start: int,
    k: int,
    cut: float,
    picked: list[_Entry],
    accept: Callable[[str], bool] | None,
) -> tuple[int, list[_Entry]]:
    """Accepted entries of ``found`` (sorted, nearest first) from ``start`` into ``picked``.

    Stops at the end, at a dot product below ``cut``, or once ``picked`` holds ``k``;
    returns the index reached (of the k-th entry when it was reached) and ``picked``.
    """
    add = picked.append
    i = start
    for i in range(start, len(found)):
        dot, e = found[i]
        if dot < cut:
            break
        if accept is None or accept(e[3]):
            add(e)
            if len(picked) >= k:
                break
    return i, picked


def _finish(
    found: list[_Hit],
    floor: float,
    latitude: float,
    longitude: float,
    k: int,
    limit: float,
    accept: Callable[[str], bool] | None,
) -> list[tuple[float, str]]:
    """The first k by exact distance among the accepted points of ``found`` that may rank."""
    if limit < math.inf:
        floor = max(floor, _cos_of_km(limit) - _DOT_MARGIN)
    if floor > -math.inf:
        found = [h for h in found if h[0] >= floor]
    found.sort(reverse=True)
    at, picked = _walk(found, 0, k, -math.inf, [], accept)
    if len(picked) == k:  # and every accepted point within the margin of the k-th
        _walk(found, at + 1, len(found), found[at][0] - _DOT_MARGIN, picked, accept)
    return _ranked(picked, latitude, longitude, k, limit)


def _ranked(
    picked: list[_Entry], latitude: float, longitude: float, k: int, limit: float
) -> list[tuple[float, str]]:
    """The first k of ``picked`` by exact distance (then id), at most ``limit`` away."""
    exact = _haversines(picked, latitude, longitude)
    if limit < math.inf:
        exact = [h for h in exact if h[0] <= limit]
    exact.sort()
    return exact[:k]


def _haversines(
    entries: list[_Entry], latitude: float, longitude: float
) -> list[tuple[float, str]]:
    """``(haversine_km(latitude, longitude, lat, lon), id)`` of each entry, bit for bit.

    The arithmetic of :func:`common.geo.haversine_km`, inlined: ``radians(x)`` is
    ``x * (pi / 180)`` in CPython, and ``min(1.0, s)`` is ``s if s < 1.0 else 1.0``.
    """
    sin, asin, sqrt = math.sin, math.asin, math.sqrt
    p1 = latitude * _DEG
    cp1 = math.cos(p1)
    two_r = 2 * EARTH_RADIUS_KM
    return [
        (
            two_r
            * asin(
                s
                if (
                    s := sqrt(
                        sin((e[4] - p1) / 2) ** 2
                        + cp1 * e[5] * sin((e[6] - longitude) * _DEG / 2) ** 2
                    )
                )
                < 1.0
                else 1.0
            ),
            e[3],
        )
        for e in entries
    ]


class _Block:
    """The block of grid cells a ring search has visited: rows ``ilo..ihi`` x columns
    ``jlo..jhi`` (columns wrap around), with the distance in km from the query to each
    of its four sides (inf where a side is a pole)."""

    __slots__ = (
        "c1",
        "cs_lat",
        "cs_lon",
        "east",
        "ihi",
        "ilo",
        "jhi",
        "jlo",
        "latitude",
        "longitude",
        "ncols",
        "north",
        "nrows",
        "south",
        "west",
    )

    def __init__(
        self,
        latitude: float,
        longitude: float,
        c1: float,
        i0: int,
        j0: int,
        cs_lat: float,
        cs_lon: float,
        nrows: int,
        ncols: int,
    ) -> None:
        self.latitude, self.longitude, self.c1 = latitude, longitude, c1
        self.cs_lat, self.cs_lon, self.nrows, self.ncols = cs_lat, cs_lon, nrows, ncols
        self.ilo, self.ihi = max(i0 - 1, 0), min(i0 + 1, nrows - 1)
        self.jlo, self.jhi = j0 - 1, j0 + 1
        self.south = self._south()
        self.north = self._north()
        self.west = self._lon_km(longitude - (self.jlo * cs_lon - 180.0))
        self.east = self._lon_km((self.jhi + 1) * cs_lon - 180.0 - longitude)

    def _lon_km(self, gap_deg: float) -> float:
        # cross-track distance to a meridian gap_deg away (>= 90 deg: to the pole)
        return EARTH_RADIUS_KM * math.asin(self.c1 * math.sin(min(gap_deg, 90.0) * _DEG))

    def _south(self) -> float:
        if self.ilo <= 0:
            return math.inf
        return (self.latitude - (self.ilo * self.cs_lat - 90.0)) * _KM_PER_DEG

    def _north(self) -> float:
        if self.ihi + 1 >= self.nrows:
            return math.inf
        return ((self.ihi + 1) * self.cs_lat - 90.0 - self.latitude) * _KM_PER_DEG

    def first_keys(self) -> list[int]:
        ncols = self.ncols
        return [
            i * ncols + (j % ncols)
            for i in range(self.ilo, self.ihi + 1)
            for j in range(self.jlo, self.jhi + 1)
        ]

    def bound(self) -> float:
        """Every point outside the block is at least this many km from the query."""
        return min(self.south, self.north, self.west, self.east)

    def too_wide(self, max_cells: int) -> bool:
        """Growing once more would span half the globe or more than ``max_cells`` cells."""
        width = self.jhi - self.jlo + 1
        return (width + 1) * self.cs_lon >= 180.0 or (self.ihi - self.ilo + 2) * (
            width + 1
        ) > max_cells

    def grow(self, bound: float) -> list[int]:
        """Add the side at distance ``bound`` (the nearest); returns its new cells' keys."""
        ncols = self.ncols
        if bound == self.south:
            self.ilo -= 1
            base = self.ilo * ncols
            self.south = self._south()
            return [base + (j % ncols) for j in range(self.jlo, self.jhi + 1)]
        if bound == self.north:
            self.ihi += 1
            base = self.ihi * ncols
            self.north = self._north()
            return [base + (j % ncols) for j in range(self.jlo, self.jhi + 1)]
        if bound == self.west:
            self.jlo -= 1
            col = self.jlo % ncols
            self.west = self._lon_km(self.longitude - (self.jlo * self.cs_lon - 180.0))
            return [i * ncols + col for i in range(self.ilo, self.ihi + 1)]
        self.jhi += 1
        col = self.jhi % ncols
        self.east = self._lon_km((self.jhi + 1) * self.cs_lon - 180.0 - self.longitude)
        return [i * ncols + col for i in range(self.ilo, self.ihi + 1)]


class GeoIndex:
    """Exact k-nearest-neighbour queries by haversine distance over a mutable point set."""

    __slots__ = ("_cells", "_cs_lat", "_cs_lon", "_entries", "_n_built", "_ncols", "_nrows")

    def __init__(self) -> None:
        # point id -> (cell key, entry)
        self._entries: dict[str, tuple[int, _Entry]] = {}
        self._cells: dict[int, list[_Entry]] = {}
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
            if old[1][7] == latitude and old[1][6] == longitude:
                return
            self._unlink(old)
        entry = _entry(point_id, latitude, longitude)
        key = self._key(latitude, longitude)
        self._entries[point_id] = (key, entry)
        self._cells.setdefault(key, []).append(entry)
        n = len(self._entries)
        if n >= _MIN_REBUILD and (n >= 2 * self._n_built or 4 * n < self._n_built):
            self._rebuild()

    def load(self, points: Iterable[tuple[str, float, float]]) -> None:
        """Insert many new points at once (a replica's snapshot): one rebuild at the end."""
        for point_id, latitude, longitude in points:
            if point_id in self._entries:
                self.put(point_id, latitude, longitude)
                continue
            entry = _entry(point_id, latitude, longitude)
            key = self._key(latitude, longitude)
            self._entries[point_id] = (key, entry)
            self._cells.setdefault(key, []).append(entry)
        if len(self._entries) >= _MIN_REBUILD:
            self._rebuild()

    def remove(self, point_id: str) -> None:
        """Forget ``point_id`` (no error when absent)."""
        old = self._entries.pop(point_id, None)
        if old is not None:
            self._unlink(old)

    def _unlink(self, old: tuple[int, _Entry]) -> None:
        cell = self._cells[old[0]]
        cell.remove(old[1])
        if not cell:
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
        if len(self._entries) <= k + _FEW_MORE:
            return self._brute(latitude, longitude, k, limit, accept)
        x0, y0, z0 = _unit(latitude, longitude)
        if 3 * self._cs_lon >= 180.0:
            found = self._scan_all(x0, y0, z0)
            return _finish(found, -math.inf, latitude, longitude, k, limit, accept)
        return self._search(latitude, longitude, x0, y0, z0, k, limit, accept)

    def within(
        self, latitude: float, longitude: float, max_km: float | None = None
    ) -> list[tuple[float, str]]:
        """Every ``(distance_km, id)`` within ``max_km`` (None = all), nearest first."""
        limit = math.inf if max_km is None else max_km
        return self._brute(latitude, longitude, len(self._entries), limit, None)

    # --- internals ------------------------------------------------------------------

    def _scan_all(self, x0: float, y0: float, z0: float) -> list[_Hit]:
        return [
            (e[0] * x0 + e[1] * y0 + e[2] * z0, e) for cell in self._cells.values() for e in cell
        ]

    def _brute(
        self,
        latitude: float,
        longitude: float,
        k: int,
        limit: float,
        accept: Callable[[str], bool] | None,
    ) -> list[tuple[float, str]]:
        """Exact haversine for every point (few points: every one of them ranks anyway)."""
        found = _haversines([e for _key, e in self._entries.values()], latitude, longitude)
        if limit < math.inf:
            found = [h for h in found if h[0] <= limit]
        if accept is not None:
            found = [h for h in found if accept(h[1])]
        found.sort()
        return found[:k]

    def _search(
        self,
        latitude: float,
        longitude: float,
        x0: float,
        y0: float,
        z0: float,
        k: int,
        limit: float,
        accept: Callable[[str], bool] | None,
    ) -> list[tuple[float, str]]:
        """The ring search (see the module docstring)."""
        limit_hi = limit * (1.0 + 1e-6) + _MARGIN_KM
        cs_lat, cs_lon, nrows, ncols = self._cs_lat, self._cs_lon, self._nrows, self._ncols
        c1 = max(0.0, math.cos(latitude * _DEG))
        i0 = min(int((latitude + 90.0) / cs_lat), nrows - 1)
        j0 = min(int((longitude + 180.0) / cs_lon), ncols - 1)
        get = self._cells.get
        total = len(self._entries)
        max_cells = 4 * len(self._cells) + 64
        inf = math.inf
        none = ()
        # the visited block: first the 3 x 3 cells around the query, then one side at a
        # time, always the side nearest to the query (see _Block)
        block = _Block(latitude, longitude, c1, i0, j0, cs_lat, cs_lon, nrows, ncols)
        keys = block.first_keys()
        # every point visited, with its dot product (no point is filtered out here)
        found = [(e[0] * x0 + e[1] * y0 + e[2] * z0, e) for key in keys for e in get(key, none)]
        # the search stops once the cosine of the bound is below `target`: set from the
        # first k-th dot product found; more points can only raise the k-th dot product,
        # so the block grows into it without sorting again
        target = -inf
        floor = -inf  # no point with a smaller dot product can rank
        check_at = k
        while len(found) < total:
            # every unvisited point is at least `bound` km away
            bound = block.bound()
            if bound > limit_hi:
                break
            if target == -inf and len(found) >= check_at:
                found.sort(reverse=True)
                at, picked = _walk(found, 0, k, -inf, [], accept)
                if len(picked) < k:  # look again once enough new points could be
                    check_at = len(found) + k - len(picked)
                else:
                    target = found[at][0] - 2.0 * _DOT_MARGIN
                    floor = found[at][0] - _DOT_MARGIN
                    if _cos_of_km(bound - _MARGIN_KM) < target:
                        # the common case: the first k were enough (their verdicts kept)
                        _walk(found, at + 1, len(found), floor, picked, accept)
                        return _ranked(picked, latitude, longitude, k, limit)
            elif _cos_of_km(bound - _MARGIN_KM) < target:
                break
            if block.too_wide(max_cells):
                # far from the data: growing the block would cost more than every point
                found, floor = self._scan_all(x0, y0, z0), -inf
                break
            keys = block.grow(bound)
            found += [
                (e[0] * x0 + e[1] * y0 + e[2] * z0, e) for key in keys for e in get(key, none)
            ]
        return _finish(found, floor, latitude, longitude, k, limit, accept)

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
        lats = [e[7] for e in entries]
        lons = [e[6] for e in entries]
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
        # fresh objects allocated cell by cell: a query then reads neighbouring memory
        keyed = sorted(((self._key(e[7], e[6]), e) for e in entries), key=lambda ke: ke[0])
        for key, (x, y, z, pid, p, cp, lon, lat) in keyed:
            e = (x + 0.0, y + 0.0, z + 0.0, pid, p + 0.0, cp + 0.0, lon, lat)
            self._entries[pid] = (key, e)
            self._cells.setdefault(key, []).append(e)
        self._n_built = n
