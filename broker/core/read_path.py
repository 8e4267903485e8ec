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
from broker.core.sessions import session_cost, to_decimal
from common.messages import MAX_LIMIT, Bateria, Consulta
from common.replies import PointView, TariffView
from common.tariff_book import TariffBook

TYPICAL_SESSION_KWH: Final = 30.0  # for espera_estimada_min: energy of a session not yet started


class PointReads:
    """Points by id, their geo index and their cached views: what a query reads."""

    __slots__ = ("index", "points", "queue_capacity", "tariffs", "views")

    def __init__(self, points: dict[str, PointState], queue_capacity: int) -> None:
        self.points = points
        self.queue_capacity = queue_capacity
        self.index = GeoIndex()
        self.views = PointViews(queue_capacity)
        #: the core's tariffs (docs/tariffs.md); None where they are not known (a
        #: gateway's replica): points then show no ``tarifa`` and estimate flat prices
        self.tariffs: TariffBook | None = None

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
        book = self.tariffs
        tarifa = None if book is None else book.view(p.id, p.potencia_kw, now)
        return point_view(p, self.queue_capacity, distance, wait_minutes(p, now), tarifa)

    def encoded_points(
        self, hits: list[tuple[float, PointState]], now: float, costs: list[float] | None = None
    ) -> bytes:
        """``[Point, ...]`` as JSON for ``(distance_km, point)`` hits, from cached views;
        ``costs`` (one per hit) become ``custo_estimado``."""

        def wait(p: PointState) -> int:
            return wait_minutes(p, now)

        book = self.tariffs
        if book is None or book.empty:
            return self.views.encode_list(hits, wait, None, costs)

        def tariff_of(p: PointState) -> TariffView | None:
            return book.view(p.id, p.potencia_kw, now)

        return self.views.encode_list(hits, wait, tariff_of, costs)

    def estimates(
        self,
        hits: list[tuple[float, PointState]],
        now: float,
        level: float,
        target: float,
        capacity_kwh: float,
    ) -> list[float]:
        """``custo_estimado`` per hit: from ``level`` to ``target`` % of ``capacity_kwh``
        at the point's power, starting after its estimated wait, under its tariff then."""
        energy = max(0.0, target - level) / 100.0 * capacity_kwh
        book = self.tariffs
        out: list[float] = []
        add = out.append
        for _d, p in hits:
            if p.session is None and p.pending is None and not p.queue:
                start = now  # an idle point: no wait (the common case)
            else:
                start = now + wait_minutes(p, now) * 60.0
            if book is None:
                add(float(session_cost(to_decimal(energy), to_decimal(p.preco_kwh))))
            else:
                add(book.estimate(p.id, p.potencia_kw, start, energy, p.preco_kwh))
        return out


def _priced(
    reads: PointReads,
    hits: list[tuple[float, PointState]],
    now: float,
    level: float,
    data: Bateria | Consulta,
) -> tuple[list[tuple[float, PointState]], list[float]]:
    """The hits with their ``custo_estimado``, cheapest first when ``ordenar`` is custo
    (ties by distance)."""
    assert data.capacidade_kwh is not None and data.nivel_carregar is not None
    costs = reads.estimates(hits, now, level, data.nivel_carregar, data.capacidade_kwh)
    if data.ordenar == "custo":
        order = sorted(range(len(hits)), key=lambda i: (costs[i], hits[i][0]))
        hits = [hits[i] for i in order]
        costs = [costs[i] for i in order]
    return hits, costs


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
    if data.capacidade_kwh is None or data.nivel_carregar is None:
        return Raw(b'{"pontos":' + reads.encoded_points(hits, now) + b"}")
    hits, costs = _priced(reads, hits, now, data.nivel_bateria, data)
    return Raw(b'{"pontos":' + reads.encoded_points(hits, now, costs) + b"}")


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
    if data.capacidade_kwh is None or data.nivel_carregar is None or data.nivel_bateria is None:
        return Raw(reads.encoded_points(hits, now)), truncated
    hits, costs = _priced(reads, hits, now, data.nivel_bateria, data)
    return Raw(reads.encoded_points(hits, now, costs)), truncated
