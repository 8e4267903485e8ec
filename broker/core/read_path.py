"""The read path: answering ``bateria`` and ``consulta`` from a table of points.

One :class:`PointReads` holds what a query needs: the points by id, their
geo index and their cached encoded views (:mod:`broker.core.point_views`).
The core's :class:`~broker.core.engine.Engine` owns one over its own point
table; a vehicle gateway owns one over the replica it keeps from the bus
(:mod:`broker.gateway.replica`). Both answer a query with the same functions
below, so a gateway's reply is the core's reply, byte for byte, for the same
point state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from msgspec import Raw

from broker.core.geoindex import GeoIndex
from broker.core.point_views import PointViews, point_view
from broker.core.points import PointState
from common.messages import MAX_LIMIT, Bateria, Consulta
from common.replies import PointView

TYPICAL_SESSION_KWH: Final = 30.0  # for espera_estimada_min: energy of a session not yet started


class PointReads:
    """Points by id, their geo index and their cached views: what a query reads."""

    __slots__ = ("index", "points", "queue_capacity", "views")

    def __init__(self, points: dict[str, PointState], queue_capacity: int) -> None:
        self.points = points
        self.queue_capacity = queue_capacity
        self.index = GeoIndex()
        self.views = PointViews(queue_capacity)

    def nearest(
        self,
        latitude: float,
        longitude: float,
        k: int,
        max_km: float | None,
        usable_only: bool,
    ) -> list[tuple[float, PointState]]:
        """Up to ``k`` ``(distance_km, point)`` pairs, nearest first."""
        points = self.points
        accept: Callable[[str], bool] | None = None
        if usable_only:

            def accept(pid: str) -> bool:
                p = points[pid]
                return p.usable and not p.out_of_service

        hits = self.index.nearest(latitude, longitude, k, max_km, accept)
        return [(d, points[pid]) for d, pid in hits]

    def point_view(self, p: PointState, distance: float | None, now: float) -> PointView:
        """The protocol's Point object (``distance`` omitted when None)."""
        return point_view(p, self.queue_capacity, distance, wait_minutes(p, now))

    def encoded_points(self, hits: list[tuple[float, PointState]], now: float) -> bytes:
        """``[Point, ...]`` as JSON for ``(distance_km, point)`` hits, from cached views."""

        def wait(p: PointState) -> int:
            return wait_minutes(p, now)

        return self.views.encode_list(hits, wait)


def wait_minutes(p: PointState, now: float) -> int:
    """Estimated minutes until a reservation made now would get the turn.

    The running session needs the energy it still lacks at the point's power (on a site,
    the power allocated to it); every queued reservation starts no earlier than its ETA
    and then charges a typical session (:data:`TYPICAL_SESSION_KWH`).
    """
    s = p.session
    if s is None and p.pending is None and not p.queue:
        return 0  # the common case on the hot path of bateria/consulta
    power = p.potencia_kw if p.potencia_kw > 0 else 1.0
    t = now
    if s is not None:
        target = (s.nivel_carregar - s.nivel_inicial) / 100.0 * s.capacidade_kwh
        allowed = s.allowed_kw  # on a site: what it may draw (paused: its minimum, 4.2 kW)
        drawing = power if allowed is None else (allowed if allowed > 0 else min(power, 4.2))
        t += max(0.0, target - s.energy_reported) / drawing * 3600.0
    elif p.pending is not None:
        t += TYPICAL_SESSION_KWH / power * 3600.0
    for r in p.queue:
        t = max(t, r.created_at + r.eta_s) + TYPICAL_SESSION_KWH / power * 3600.0
    return max(0, math.ceil((t - now) / 60.0 - 1e-9))


def bateria_points(reads: PointReads, data: Bateria, now: float) -> Raw:
    """``{"pontos": [...]}``, already encoded: the nearest usable points."""
    loc = data.localizacao
    max_km = data.distancia_max or None
    hits = reads.nearest(loc.latitude, loc.longitude, data.limite, max_km, usable_only=True)
    return Raw(b'{"pontos":' + reads.encoded_points(hits, now) + b"}")


def consulta_points(reads: PointReads, data: Consulta, now: float) -> tuple[Raw, bool]:
    """``[Point, ...]`` already encoded, and whether the list was cut at MAX_LIMIT.

    Without ``limite`` at most MAX_LIMIT points are returned; when more were in range
    the reply says ``"truncated": true`` (docs/protocol.md).
    """
    loc = data.localizacao
    max_km = data.distancia_max or None
    truncated = False
    if data.limite is None:
        hits = reads.nearest(loc.latitude, loc.longitude, MAX_LIMIT + 1, max_km, usable_only=False)
        if len(hits) > MAX_LIMIT:
            hits, truncated = hits[:MAX_LIMIT], True
    else:
        hits = reads.nearest(loc.latitude, loc.longitude, data.limite, max_km, usable_only=False)
    return Raw(reads.encoded_points(hits, now)), truncated
