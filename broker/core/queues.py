"""Reservations and the per-point FIFO queue rules that need no other state.

The queue itself is ``PointState.queue`` (a list, head first); this module
holds the reservation record, its persisted form and the deadline formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.replies import ReservationView
from common.timeutil import format_timestamp


@dataclass(slots=True, eq=False)
class Reservation:
    """One vehicle waiting at (or holding the turn of) one point."""

    id: str
    vehicle_id: str
    point_id: str
    created_at: float
    eta_s: float
    order: int
    turn_started_at: float | None = None
    deadline: float | None = None
    #: the network address of the connection that made it (per-address cap), if known
    address: str | None = None

    def record(self) -> dict[str, Any]:
        """Persisted form; :meth:`from_record` reads it back."""
        out = {
            "reservation_id": self.id,
            "vehicle_id": self.vehicle_id,
            "point_id": self.point_id,
            "created_at": self.created_at,
            "eta_s": self.eta_s,
            "order": self.order,
            "turn_started_at": self.turn_started_at,
            "deadline": self.deadline,
        }
        if self.address is not None:
            out["address"] = self.address
        return out

    @classmethod
    def from_record(cls, value: dict[str, Any]) -> Reservation:
        return cls(
            id=str(value["reservation_id"]),
            vehicle_id=str(value["vehicle_id"]),
            point_id=str(value["point_id"]),
            created_at=float(value["created_at"]),
            eta_s=float(value["eta_s"]),
            order=int(value["order"]),
            turn_started_at=_opt_float(value.get("turn_started_at")),
            deadline=_opt_float(value.get("deadline")),
            address=None if value.get("address") is None else str(value["address"]),
        )

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


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
