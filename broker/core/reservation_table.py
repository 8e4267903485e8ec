"""The reservations table: every queued reservation, by vehicle and by id.

:class:`ReservationTable` is the only writer of reservations and of the point
queues (``PointState.queue``): it queues, gives the turn to the head, cancels,
expires and forgets, with the station commands (``hold``, ``release``), pushes
and bus events each of those means. Whether a turn may be given is the engine's
``refresh`` funnel; capacity is checked by the caller of :meth:`new`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.core.effects import Effect, Persist, Push, Reply, SendStation
from broker.core.point_table import PointTable
from broker.core.points import PointState, holds_turn
from broker.core.queues import Reservation, turn_deadline
from broker.core.shared import Shared
from broker.core.timers import HoldTimeout, TurnDeadline
from common.errors import EVError, PointBusy, PointUnavailable
from common.events import ReservationCancelled, ReservationExpired, ReservationTurn
from common.messages import Hold, Release
from common.replies import ReservaCancelada, ReservaExpirada, Reserved, SuaVez, refusal
from common.timeutil import format_timestamp


@dataclass(slots=True)
class HoldWait:
    """A ``hold`` sent and not yet acked; ``conn``/``request_id``/``answer`` are the
    ``reserva`` reply that waits for it (None when the turn came later)."""

    point_id: str
    reservation_id: str
    conn: int | None = None
    request_id: Any = None
    answer: Reserved | None = None
    after: list[Effect] = field(default_factory=list)


def hold_refusal(error: str | None) -> EVError:
    """What a station's refusal of ``hold`` means for the driver: ``point_busy`` when the
    station says so (the error's code, before ``:``), else ``point_unavailable``."""
    text = error or "refused"
    message = f"The station refused to hold the point ({text.strip()[:200]})"
    if text.partition(":")[0].strip() == "point_busy":
        return PointBusy(message)
    return PointUnavailable(message)


class ReservationTable:
    """Every reservation; at most one per vehicle."""

    def __init__(self, shared: Shared, points: PointTable) -> None:
        self._s = shared
        self._points = points
        self._by_vehicle: dict[str, Reservation] = {}
        self._by_id: dict[str, Reservation] = {}
        self._order = 0
        self._holds: dict[str, HoldWait] = {}  # hold cmd_id -> what its ack decides
        # live reservations per network address (``max_reservations_per_address``)
        self._by_address: dict[str, int] = {}
        #: the reservation of this vehicle, or None (the table's own bound method)
        self.of: Callable[[str], Reservation | None] = self._by_vehicle.get
        #: the reservation with this id, or None
        self.by_id: Callable[[str], Reservation | None] = self._by_id.get

    def __len__(self) -> int:
        return len(self._by_id)

    def of_address(self, address: str) -> int:
        """How many live reservations connections from ``address`` made."""
        return self._by_address.get(address, 0)

    def _count_address(self, r: Reservation, step: int) -> None:
        address = r.address
        if address is None:
            return
        n = self._by_address.get(address, 0) + step
        if n > 0:
            self._by_address[address] = n
        else:
            self._by_address.pop(address, None)

    def new(
        self,
        p: PointState,
        vehicle_id: str,
        eta_s: float,
        now: float,
        fx: list[Effect],
        address: str | None = None,
    ) -> Reservation:
        """Queue a new reservation at ``p`` (the caller checked capacity).

        ``address``: the network address of the connection that asked (counted).
        """
        self._order += 1
        r = Reservation(
            id=self._s.new_id("res"),
            vehicle_id=vehicle_id,
            point_id=p.id,
            created_at=now,
            eta_s=eta_s,
            order=self._order,
            address=address,
        )
        self._count_address(r, 1)
        p.queue.append(r)
        self._by_vehicle[r.vehicle_id] = r
        self._by_id[r.id] = r
        self._persist(fx, r)
        return r

    def restore(self, r: Reservation) -> None:
        """Queue a persisted reservation (call in ``order``); skipped if it cannot stand."""
        p = self._points.get(r.point_id)
        if p is None or r.vehicle_id in self._by_vehicle:
            return
        p.queue.append(r)
        self._count_address(r, 1)
        self._by_vehicle[r.vehicle_id] = r
        self._by_id[r.id] = r
        self._order = max(self._order, r.order)
        if r.deadline is not None:
            self._s.timers.schedule(r.deadline, TurnDeadline(r.id, r.deadline))

    def _persist(self, fx: list[Effect], r: Reservation) -> None:
        fx.append(Persist("reservation", r.id, r.record()))

    # --- the turn -------------------------------------------------------------------

    def give_turn(self, p: PointState, now: float, fx: list[Effect]) -> None:
        """Give the turn to the head of the queue when the point is free and usable."""
        if (
            not p.usable
            or p.out_of_service
            or p.session is not None
            or p.pending is not None
            or not p.queue
        ):
            return
        head = p.queue[0]
        if head.turn_started_at is not None:
            return
        head.turn_started_at = now
        head.deadline = turn_deadline(head, now, self._s.cfg.hold_s)
        self._persist(fx, head)
        expira = format_timestamp(head.deadline)
        fx.append(
            Push(
                head.vehicle_id,
                "sua_vez",
                SuaVez(id_ponto_recarga=p.id, reservation_id=head.id, expira_em=expira),
            )
        )
        self._s.log.publish(
            fx,
            ReservationTurn(
                reservation_id=head.id,
                vehicle_id=head.vehicle_id,
                point_id=p.id,
                expira_em=expira,
                deadline=head.deadline,
            ),
            now,
        )
        self._hold(fx, p, head, now)
        self._s.timers.schedule(head.deadline, TurnDeadline(head.id, head.deadline))

    def _hold(self, fx: list[Effect], p: PointState, head: Reservation, now: float) -> None:
        assert head.deadline is not None
        cmd = Hold(
            cmd_id=self._s.new_id("cmd"),
            reservation_id=head.id,
            vehicle_id=head.vehicle_id,
            until=head.deadline,
        )
        fx.append(SendStation(p.id, cmd))
        if p.commands:
            # its ack decides: a station that refuses to hold the turn ends the
            # reservation (an entry leaves on the ack, or after ack_timeout_s)
            self._holds[cmd.cmd_id] = HoldWait(p.id, head.id)
            self._s.timers.schedule(now + self._s.cfg.ack_timeout_s, HoldTimeout(cmd.cmd_id))

    def resend_hold(self, p: PointState, now: float, fx: list[Effect]) -> None:
        """Tell a (re)connected station about the turn it holds, if any."""
        if holds_turn(p) and p.queue[0].deadline is not None:
            self._hold(fx, p, p.queue[0], now)

    # --- the station's answer to hold -----------------------------------------------

    def hold_of(self, cmd_id: str) -> HoldWait | None:
        """The hold ``cmd_id`` whose ack is awaited, or None."""
        return self._holds.get(cmd_id)

    def holds_at(self, point_id: str) -> list[str]:
        return [c for c, w in self._holds.items() if w.point_id == point_id]

    def wait_hold(
        self, r: Reservation, conn: int, request_id: Any, answer: Reserved, after: list[Effect]
    ) -> bool:
        """Let the ``reserva`` reply that gave ``r`` the turn wait for the hold's ack.

        True when a hold of ``r`` is awaiting its ack: the caller then replies nothing
        now; the ack (or its timeout) replies ``answer`` followed by ``after`` (the
        ``sua_vez`` push), or the station's refusal alone.
        """
        for wait in reversed(self._holds.values()):
            if wait.reservation_id == r.id and wait.answer is None:
                wait.conn, wait.request_id = conn, request_id
                wait.answer, wait.after = answer, after
                return True
        return False

    def hold_answered(
        self, cmd_id: str, ok: bool, error: str | None, now: float, fx: list[Effect]
    ) -> PointState | None:
        """The station acked a hold (``ok``), refused it, or did not answer in time
        (taken as ``ok``: the broker's queue is the truth for a silent station). The
        point whose turn must be passed on (its reservation ended), or None."""
        wait = self._holds.pop(cmd_id)
        r = self._by_id.get(wait.reservation_id)
        p = self._points.get(wait.point_id)
        if ok or r is None or p is None or not p.queue or p.queue[0] is not r:
            # held, or the reservation already ended some other way (cancelled, expired,
            # started): the driver hears what it was told then
            if wait.answer is not None:
                fx.append(Reply(wait.conn or 0, wait.request_id, "reserva_response", wait.answer))
                fx.extend(wait.after)
            return None
        err = hold_refusal(error)
        self._s.counters["holds_refused"] += 1
        self.forget(p, r, fx)  # nothing is held: no release to send
        self._s.log.publish(
            fx,
            ReservationCancelled(
                reservation_id=r.id, vehicle_id=r.vehicle_id, point_id=p.id, motivo=err.code
            ),
            now,
        )
        if wait.answer is not None:
            no = refusal(err, r.vehicle_id, p.id)
            fx.append(Reply(wait.conn or 0, wait.request_id, "reserva_response", no))
        else:
            cancelled = ReservaCancelada(
                id_ponto_recarga=p.id, reservation_id=r.id, motivo=err.code
            )
            fx.append(Push(r.vehicle_id, "reserva_cancelada", cancelled))
        return p

    def postpone(self, r: Reservation, due: float, token: float) -> None:
        """Check the turn of ``r`` again at ``due`` (a start is in progress for it)."""
        self._s.timers.schedule(due, TurnDeadline(r.id, token))

    # --- leaving the queue ----------------------------------------------------------

    def forget(self, p: PointState, r: Reservation, fx: list[Effect]) -> None:
        """Take ``r`` out of the queue and the tables (its session started, or it ended)."""
        p.queue.remove(r)
        self._count_address(r, -1)
        if self._by_vehicle.get(r.vehicle_id) is r:
            del self._by_vehicle[r.vehicle_id]
        self._by_id.pop(r.id, None)
        fx.append(Persist("reservation", r.id, None))

    def _drop(self, r: Reservation, fx: list[Effect]) -> None:
        """Take ``r`` out of every table; release the station's hold if it had the turn."""
        p = self._points[r.point_id]
        self.forget(p, r, fx)
        if r.turn_started_at is not None:
            cmd = Release(cmd_id=self._s.new_id("cmd"), reservation_id=r.id)
            fx.append(SendStation(p.id, cmd))

    def cancel(self, r: Reservation, now: float, fx: list[Effect], motivo: str, push: bool) -> None:
        """``r`` is cancelled (``motivo``); the vehicle is told when ``push``."""
        self._drop(r, fx)
        self._s.log.publish(
            fx,
            ReservationCancelled(
                reservation_id=r.id, vehicle_id=r.vehicle_id, point_id=r.point_id, motivo=motivo
            ),
            now,
        )
        if push:
            fx.append(
                Push(
                    r.vehicle_id,
                    "reserva_cancelada",
                    ReservaCancelada(
                        id_ponto_recarga=r.point_id, reservation_id=r.id, motivo=motivo
                    ),
                )
            )

    def expire(self, r: Reservation, now: float, fx: list[Effect]) -> None:
        """The turn of ``r`` ended unused: push ``reserva_expirada``, publish, drop it."""
        self._drop(r, fx)
        fx.append(
            Push(
                r.vehicle_id,
                "reserva_expirada",
                ReservaExpirada(id_ponto_recarga=r.point_id, reservation_id=r.id),
            )
        )
        self._s.log.publish(
            fx,
            ReservationExpired(reservation_id=r.id, vehicle_id=r.vehicle_id, point_id=r.point_id),
            now,
        )
