"""Charging points as the broker sees them: static facts, liveness, station reports.

A :class:`PointState` is plain mutable data; the rules that change it live in
:mod:`broker.core.engine`. :func:`derive_estado` and :func:`is_faulted` are the
single definition of the ``estado`` shown to vehicles and published on
``point.status``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from common.replies import PointEstado as Estado

if TYPE_CHECKING:
    from broker.core.queues import Reservation
    from broker.core.sessions import PendingStart, Session

DEFAULT_POWER_KW: Final = 50.0
DEFAULT_PRICE_KWH: Final = 2.0
DEFAULT_INTERVAL_S: Final = 2.0


@dataclass(slots=True, eq=False)
class PointState:
    """Everything the core knows about one point."""

    id: str
    latitude: float
    longitude: float
    potencia_kw: float = DEFAULT_POWER_KW
    preco_kwh: float = DEFAULT_PRICE_KWH
    interval_s: float = DEFAULT_INTERVAL_S
    window_s: float = 6.0
    # liveness
    online: bool = False
    last_heard: float = 0.0
    offline_timer_at: float | None = None
    usable: bool = False
    unusable_since: float | None = None
    # the datagram ordering rule (broker.core.stations.handle_datagram); never persisted
    boot_id: str | None = None
    # the station said ``hello`` and answers commands (a datagram-only station does not)
    commands: bool = False
    # its ack of ``hold`` confirms a reservation (``hello`` said ``confirms_holds``)
    confirms_holds: bool = False
    availability_notices: bool = False  # ``hello`` asked for ``availability`` notices
    dgram_seq: int | None = None  # the last seq seen in ``boot_id`` (None: none yet)
    dgram_ts: float = -math.inf  # the ts of the last accepted signed datagram
    # the station's latest report
    rep_available: bool = True
    rep_estado: str | None = None
    rep_vehicle: str | None = None
    rep_energy: float | None = None
    # out of service (an operator's decision; persisted, never changed by the station)
    out_of_service: bool = False
    oos_reason: str = ""
    oos_by: str = ""
    limites: bool = False  # its station obeys ``limit`` commands (hello, energy.md)
    # broker-owned state
    estado: Estado = "offline"
    queue: list[Reservation] = field(default_factory=list)
    session: Session | None = None
    pending: PendingStart | None = None

    def static_record(self) -> dict[str, Any]:
        """The persisted facts of the point (liveness is never persisted)."""
        return {
            "id": self.id,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "potencia_kw": self.potencia_kw,
            "preco_kwh": self.preco_kwh,
            "interval_s": self.interval_s,
            "out_of_service": self.out_of_service,
            "reason": self.oos_reason,
            "by": self.oos_by,
            "limites": self.limites,
        }


def holds_turn(p: PointState) -> bool:
    """Whether the head of the queue currently holds the turn."""
    return bool(p.queue) and p.queue[0].turn_started_at is not None


def is_faulted(p: PointState) -> bool:
    """The station reports a fault.

    ``estado: indisponivel``, or (original minimal form, no ``estado``)
    ``available: false`` while nothing explains it: no session or start in
    progress, no ``vehicle_id`` reported, no reservation holding the turn.
    """
    if p.rep_estado is not None:
        return p.rep_estado == "indisponivel"
    if p.rep_available:
        return False
    return p.session is None and p.pending is None and not p.rep_vehicle and not holds_turn(p)


def derive_estado(p: PointState) -> Estado:
    """Out of service: ``indisponivel``; otherwise ``offline`` > ``indisponivel`` (fault) >
    ``carregando`` > ``reservado`` > ``disponivel``."""
    if p.out_of_service:
        return "indisponivel"
    if not p.online:
        return "offline"
    if is_faulted(p):
        return "indisponivel"
    if p.session is not None or p.rep_estado == "carregando":
        return "carregando"
    if p.rep_estado is None and not p.rep_available and p.rep_vehicle:
        return "carregando"
    if holds_turn(p):
        return "reservado"
    return "disponivel"


def is_available(p: PointState) -> bool:
    """Online, not faulted, nobody charging and an empty queue."""
    return p.estado == "disponivel" and not p.queue
