"""Point objects for ``bateria`` and ``consulta`` replies, encoded once per point change.

A reply lists up to 100 points, and every one of them is the same bytes from
one request to the next except ``distance`` and ``espera_estimada_min``. So
each point's JSON is kept as two cached pieces around those two fields::

    {"id":..,"latitude":..,"longitude":..,"available":..,"estado":..,"queue_size":..,
     "queue_capacity":..,"distance":   <distance>   ,"potencia_kw":..,"preco_kwh":..,
     "espera_estimada_min":   <minutes>   }

The pieces are cut from msgspec's own encoding of the point's
:class:`common.replies.PointView` (so the bytes are exactly what encoding that
struct gives, field order included: the struct defines them) and rebuilt when
any field they hold changes. Validity is checked on
every use against a key of those fields, not by invalidation from every place
that changes a point: a check costs about 0.1 us and cannot be forgotten.

The reply data goes out as :class:`msgspec.Raw`, which the reply encoder copies
verbatim into the envelope; a query reply costs one ``join`` instead of a dict
per point and an encode of all of them (measured in tests/bench/bench_read_path.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec
from msgspec import UNSET

from broker.core.points import PointState, is_available
from common.replies import PointView, TariffView

_ENCODE: Final = msgspec.json.Encoder().encode
_DISTANCE_MARK: Final = -1.0  # placeholder encoded where the per-request distance goes
_WAIT_MARK: Final = -1  # and where the wait goes (both impossible values)
#: cached views at most (about 0.5 KiB each: ~16 MiB); the cache starts over when full
MAX_CACHED_VIEWS: Final = 32_768

# every field of the cached pieces that can change: estado, queue size, position, figures,
# the out-of-service reason (empty unless out of service, where it is required)
# and the point's tariff view (the same object while its prices hold)
_Key = tuple[str, int, float, float, float, float, str, TariffView | None]


def km3(distance: float) -> float:
    """A distance (never negative) in km with three decimals, halves up.

    What ``round(distance, 3)`` gives (no difference in 10^6 random distances;
    they can differ only on an exact half), at a third of its cost: ``round``
    with digits goes through a decimal string, and a reply rounds up to 100 of them.
    """
    return int(distance * 1000.0 + 0.5) / 1000.0


def point_view(
    p: PointState,
    queue_capacity: int,
    distance: float | None,
    wait: int,
    tarifa: TariffView | None = None,
) -> PointView:
    """The protocol's Point object (``distance`` omitted when None); a point priced by
    a tariff shows it, and its ``preco_kwh`` is the tariff's energy price now."""
    out = p.out_of_service  # only while out of service: the usual object stays as it was
    return PointView(
        id=p.id,
        latitude=p.latitude,
        longitude=p.longitude,
        available=is_available(p),
        estado=p.estado,
        queue_size=len(p.queue),
        queue_capacity=queue_capacity,
        fora_de_servico=True if out else UNSET,
        reason=p.oos_reason if out else UNSET,
        distance=UNSET if distance is None else km3(distance),
        potencia_kw=p.potencia_kw,
        preco_kwh=p.preco_kwh if tarifa is None else tarifa.energy_kwh,
        tarifa=UNSET if tarifa is None else tarifa,
        espera_estimada_min=wait,
    )


class PointViews:
    """Per-point cache of the encoded Point object, around distance and wait."""

    __slots__ = ("_cache", "_capacity")

    def __init__(self, queue_capacity: int) -> None:
        self._capacity = queue_capacity
        # point id -> (key, bytes up to the distance value, bytes up to the wait value)
        self._cache: dict[str, tuple[_Key, bytes, bytes]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def forget(self, point_id: str) -> None:
        self._cache.pop(point_id, None)

    def _encode(self, p: PointState, tarifa: TariffView | None) -> tuple[bytes, bytes]:
        view = point_view(p, self._capacity, None, _WAIT_MARK, tarifa)
        whole = _ENCODE(msgspec.structs.replace(view, distance=_DISTANCE_MARK))
        dist_at = whole.rindex(b'"distance":-1.0,') + len(b'"distance":')
        wait_at = whole.rindex(b'"espera_estimada_min":-1}') + len(b'"espera_estimada_min":')
        return whole[:dist_at], whole[dist_at + len(b"-1.0") : wait_at]

    def encode_list(
        self,
        hits: list[tuple[float, PointState]],
        wait_minutes: Callable[[PointState], int],
        tariff_of: Callable[[PointState], TariffView | None] | None = None,
        costs: list[float] | None = None,
    ) -> bytes:
        """``[Point, ...]`` for ``(distance_km, point)`` hits, in their order.

        ``wait_minutes`` is asked only about points with a queue, a session or a
        start in progress (an idle point waits 0 minutes). ``tariff_of`` (None when
        no tariff is assigned anywhere) gives a point's ``tarifa``; ``costs``, one
        per hit, are written as ``custo_estimado``. The loop is written out (no
        helper calls per point): it runs for every point of every query reply.
        """
        parts: list[bytes] = []
        add = parts.append
        cache = self._cache
        for i, (distance, p) in enumerate(hits):
            pid = p.id
            queue = p.queue
            tv = None if tariff_of is None else tariff_of(p)
            key = (
                p.estado,
                len(queue),
                p.latitude,
                p.longitude,
                p.potencia_kw,
                p.preco_kwh,
                p.oos_reason,
                tv,
            )
            hit = cache.get(pid)
            if hit is None or hit[0] != key:
                if len(cache) >= MAX_CACHED_VIEWS:
                    cache.clear()  # bounded memory; the points asked about come back
                hit = cache[pid] = (key, *self._encode(p, tv))
            add(hit[1])
            add(_ENCODE(int(distance * 1000.0 + 0.5) / 1000.0))  # km3, inlined
            add(hit[2])
            if costs is not None:
                if p.session is None and p.pending is None and not queue:
                    add(b'0,"custo_estimado":')
                else:
                    add(b'%d,"custo_estimado":' % wait_minutes(p))
                add(_ENCODE(costs[i]))
                add(b"},")
            elif p.session is None and p.pending is None and not queue:
                add(b"0},")
            else:
                add(b"%d}," % wait_minutes(p))
        if not parts:
            return b"[]"
        parts[-1] = parts[-1][:-1]  # no comma after the last point
        return b"[" + b"".join(parts) + b"]"
