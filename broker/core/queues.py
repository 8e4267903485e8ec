"""Reservations and the per-point FIFO queue rules that need no other state.

The queue itself is ``PointState.queue`` (a list, head first); this module
holds the reservation record, its persisted form and the deadline formula.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from broker.core.records import Record
from common.replies import ReservationView
from common.timeutil import format_timestamp


class Reservation(Record, eq=False):
    """One vehicle waiting at (or holding the turn of) one point; persisted as it is."""

    OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"address"})

    id: str = msgspec.field(name="reservation_id")
    vehicle_id: str
    point_id: str
    created_at: float
    eta_s: float
    order: int
    turn_started_at: float | None = None
    deadline: float | None = None
    #: the network address of the connection that made it (per-address cap), if known
    address: str | None = None

    def view(self, position: int) -> ReservationView:
        """The reservation as shown in snapshots and ``status_veiculo``."""
        return ReservationView(
            reservation_id=self.id,
            vehicle_id=self.vehicle_id,
            id_ponto_recarga=self.point_id,
            posicao=position,
            criada_em=format_timestamp(self.created_at),
            tempo_estimado=self.eta_s / 60.0,
            turno=self.turn_started_at is not None,
            expira_em=None if self.deadline is None else format_timestamp(self.deadline),
        )


def turn_deadline(r: Reservation, turn_started_at: float, hold_s: float) -> float:
    """``max(created_at + tempo_estimado, turn_started_at) + hold``."""
    return max(r.created_at + r.eta_s, turn_started_at) + hold_s


def position_of(queue: list[Reservation], vehicle_id: str) -> int:
    """1-based position of ``vehicle_id`` in ``queue``, 0 when absent."""
    for i, r in enumerate(queue):
        if r.vehicle_id == vehicle_id:
            return i + 1
    return 0
