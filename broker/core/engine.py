"""The core's state and the rules shared by every entry point.

:class:`Engine` owns the tables (points, queues, sessions, accounts, pending
station commands), the event sequence and the timer heap; nothing outside this
module writes them. Its methods apply one rule each and append the resulting
effects to the ``fx`` list they are given, in the order the edges must carry
them out. Vehicle requests and station traffic are dispatched by
:mod:`broker.core.vehicle_requests` and :mod:`broker.core.stations`, which
read through the query methods and change state only through the lifecycle
methods (``register_point``, ``new_reservation``, ``begin_start``,
``start_session``, ``fail_start``, ``bill`` ...); timers fire through
:meth:`Engine.tick`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

import msgspec

from broker.core.accounts import Accounts
from broker.core.config import CoreConfig
from broker.core.effects import Effect, Persist, Publish, Push, Rejected, Reply, SendStation
from broker.core.geoindex import GeoIndex
from broker.core.point_views import PointViews, point_view
from broker.core.points import PointState, derive_estado, holds_turn, is_available, is_faulted
from broker.core.queues import Reservation, turn_deadline
from broker.core.sessions import (
    CURRENCY,
    MILLI,
    NO_CONNECTION,
    PendingStart,
    Session,
    pending_key,
    session_cost,
    to_decimal,
)
from broker.core.timers import TimerHeap
from common.errors import EVError, PointBusy, PointUnavailable, PointUnreachable
from common.events import (
    ChargingCompleted,
    ChargingStarted,
    EventData,
    PointAvailability,
    PointOffline,
    PointOnline,
    PointRegistered,
    PointStatus,
    ReservationCancelled,
    ReservationExpired,
    ReservationTurn,
    VehicleLowBattery,
    event_fields,
)
from common.messages import (
    Availability,
    BrokerToStation,
    BusEvent,
    Chegada,
    Hold,
    Release,
    Start,
    Stop,
)
from common.replies import (
    CustoFinal,
    Encerramento,
    PointView,
    ReservaCancelada,
    ReservaExpirada,
    Reserved,
    Started,
    Statement,
    SuaVez,
    refusal,
)
from common.timeutil import format_timestamp

TYPICAL_SESSION_KWH: Final = 30.0  # for espera_estimada_min: energy of a session not yet started
MAX_ABANDONED: Final = 1024


OFFLINE_SLOT_S: Final = 0.25


def offline_slot(t: float) -> float:
    """Offline checks are grouped on a 0.25 s grid, so that many points share a wake-up."""
    return math.ceil(t / OFFLINE_SLOT_S) * OFFLINE_SLOT_S


def kwh3(value: Decimal) -> float:
    """Energy for the wire: kWh with three decimals."""
    return float(value.quantize(MILLI, rounding=ROUND_HALF_UP))


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


class Engine:
    """All state of the broker core; see :mod:`broker.core` for the theory of operation."""

    def __init__(self, config: CoreConfig, new_id: Callable[[str], str]) -> None:
        self._cfg = config
        self.config: Final[CoreConfig] = config  # frozen: reading it changes nothing
        self._new_id = new_id
        self._points: dict[str, PointState] = {}
        #: the point with this id, or None (the table's own lookup: no call overhead
        #: on the datagram hot path)
        self.point: Callable[[str], PointState | None] = self._points.get
        self._index = GeoIndex()
        self._views = PointViews(config.queue_capacity)
        self._low_battery: set[str] = set()  # vehicles told about; see battery_report
        self._res_by_vehicle: dict[str, Reservation] = {}
        self._res_by_id: dict[str, Reservation] = {}
        self._sessions: dict[str, Session] = {}
        self._session_by_vehicle: dict[str, Session] = {}
        # lookups as the tables' own bound methods (no call overhead on the request path)
        self.reservation_of: Callable[[str], Reservation | None] = self._res_by_vehicle.get
        self.session_of: Callable[[str], Session | None] = self._session_by_vehicle.get
        self._pending: dict[str, PendingStart] = {}
        self._holds: dict[str, HoldWait] = {}  # hold cmd_id -> what its ack decides
        self._abandoned: dict[str, tuple[str, str]] = {}
        self._accounts = Accounts()
        self._timers = TimerHeap()
        self._seq = 0
        self._order = 0
        self._points_online = 0
        self._counters: dict[str, int] = {
            "datagrams_stale": 0,
            "datagrams_replayed": 0,
            "session_duplicates": 0,
            "sessions_unknown": 0,
            "acks_unknown": 0,
            "points_refused": 0,
            "sessions_out_of_bounds": 0,
            "holds_refused": 0,
        }

    # --- reading --------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The seq of the last event published (0 before any)."""
        return self._seq

    def count(self, name: str) -> None:
        """Count one occurrence of ``name`` in :meth:`stats`."""
        self._counters[name] += 1

    def counter(self, name: str) -> int:
        return self._counters[name]

    def nearest(
        self,
        latitude: float,
        longitude: float,
        k: int,
        max_km: float | None,
        usable_only: bool,
    ) -> list[tuple[float, PointState]]:
        """Up to ``k`` ``(distance_km, point)`` pairs, nearest first."""
        points = self._points
        accept: Callable[[str], bool] | None = None
        if usable_only:

            def accept(pid: str) -> bool:
                p = points[pid]
                return p.usable and not p.out_of_service

        hits = self._index.nearest(latitude, longitude, k, max_km, accept)
        return [(d, points[pid]) for d, pid in hits]

    def running_session(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def pending_of(self, vehicle_id: str) -> PendingStart | None:
        """The start in progress for ``vehicle_id``, if any."""
        for pend in self._pending.values():
            if pend.vehicle_id == vehicle_id:
                return pend
        return None

    def statement(self, vehicle_id: str) -> Statement:
        return self._accounts.statement(vehicle_id)

    def all_statements(self) -> dict[str, Statement]:
        return self._accounts.all_statements()

    # --- building effects -------------------------------------------------------------

    def publish(self, fx: list[Effect], data: EventData, now: float) -> None:
        """Publish ``data`` on its topic with the next seq."""
        self._seq += 1
        fx.append(Publish(BusEvent(self._seq, now, data.TOPIC, event_fields(data))))

    def send(self, fx: list[Effect], point_id: str, message: BrokerToStation) -> None:
        fx.append(SendStation(point_id, message))

    def _hold(self, fx: list[Effect], p: PointState, head: Reservation, now: float) -> None:
        assert head.deadline is not None
        cmd = Hold(
            cmd_id=self._new_id("cmd"),
            reservation_id=head.id,
            vehicle_id=head.vehicle_id,
            until=head.deadline,
        )
        fx.append(SendStation(p.id, cmd))
        if p.commands:
            # its ack decides: a station that refuses to hold the turn ends the
            # reservation (an entry leaves on the ack, or after ack_timeout_s)
            self._holds[cmd.cmd_id] = HoldWait(p.id, head.id)
            self._timers.schedule(now + self._cfg.ack_timeout_s, "hold", cmd.cmd_id)

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

    def _hold_answered(
        self, cmd_id: str, ok: bool, error: str | None, now: float, fx: list[Effect]
    ) -> None:
        """The station acked a hold (``ok``), refused it, or did not answer in time
        (taken as ``ok``: the broker's queue is the truth for a silent station)."""
        wait = self._holds.pop(cmd_id)
        r = self._res_by_id.get(wait.reservation_id)
        p = self._points.get(wait.point_id)
        if ok or r is None or p is None or not p.queue or p.queue[0] is not r:
            # held, or the reservation already ended some other way (cancelled, expired,
            # started): the driver hears what it was told then
            if wait.answer is not None:
                fx.append(Reply(wait.conn or 0, wait.request_id, "reserva_response", wait.answer))
                fx.extend(wait.after)
            return
        err = hold_refusal(error)
        self._counters["holds_refused"] += 1
        self._forget_reservation(p, r, fx)  # nothing is held: no release to send
        self.publish(
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
            fx.append(
                Push(
                    r.vehicle_id,
                    "reserva_cancelada",
                    ReservaCancelada(id_ponto_recarga=p.id, reservation_id=r.id, motivo=err.code),
                )
            )
        self.refresh(p, now, fx)

    def send_stop(self, fx: list[Effect], point_id: str, session_id: str) -> None:
        fx.append(SendStation(point_id, Stop(cmd_id=self._new_id("cmd"), session_id=session_id)))

    def _persist_reservation(self, fx: list[Effect], r: Reservation) -> None:
        fx.append(Persist("reservation", r.id, r.record()))

    def persist_session(self, fx: list[Effect], s: Session) -> None:
        fx.append(Persist("session", s.id, s.record()))

    # --- points ---------------------------------------------------------------------

    def window(self, interval_s: float) -> float:
        return max(self._cfg.offline_after_s, 3.0 * interval_s)

    def may_register(self) -> bool:
        """False (and counted) when no new point may be registered: the point cap is reached."""
        if len(self._points) < self._cfg.max_points:
            return True
        self._counters["points_refused"] += 1
        return False

    def register_point(self, p: PointState, now: float, fx: list[Effect]) -> None:
        """A point heard of for the first time: index, persist, ``point.registered``."""
        p.window_s = self.window(p.interval_s)
        self._points[p.id] = p
        self._index.put(p.id, p.latitude, p.longitude)
        fx.append(Persist("point", p.id, p.static_record()))
        self.publish(
            fx,
            PointRegistered(
                point_id=p.id,
                latitude=p.latitude,
                longitude=p.longitude,
                potencia_kw=p.potencia_kw,
                preco_kwh=p.preco_kwh,
            ),
            now,
        )

    def move_point(self, p: PointState, latitude: float, longitude: float) -> None:
        p.latitude, p.longitude = latitude, longitude
        self._index.put(p.id, latitude, longitude)

    def arm_offline(self, p: PointState, now: float) -> None:
        """Arm the point's offline timer unless one is armed (it re-arms itself lazily)."""
        if p.offline_timer_at is None:
            p.offline_timer_at = offline_slot(now + p.window_s)
            self._timers.schedule(p.offline_timer_at, "offline", p.id)

    def heard(self, p: PointState, now: float, fx: list[Effect]) -> None:
        """A sign of life: refresh ``last_heard``; an offline point comes back online."""
        p.last_heard = now
        self.arm_offline(p, now)
        if not p.online:
            p.online = True
            self._points_online += 1
            self.publish(fx, PointOnline(point_id=p.id), now)

    def refresh(self, p: PointState, now: float, fx: list[Effect]) -> None:
        """Re-derive usability, pass the turn if possible, publish a changed ``estado``."""
        usable = p.online and not is_faulted(p)
        if usable != p.usable:
            p.usable = usable
            if usable:
                p.unusable_since = None
            else:
                p.unusable_since = now
                if p.queue or p.session is not None:
                    self._timers.schedule(now + self._cfg.offline_grace_s, "grace", p.id, now)
        if usable:
            self._advance(p, now, fx)
        estado = derive_estado(p)
        if estado != p.estado:
            p.estado = estado
            self.publish(
                fx,
                PointStatus(
                    point_id=p.id,
                    estado=estado,
                    available=is_available(p),
                    queue_size=len(p.queue),
                ),
                now,
            )

    def set_availability(
        self, p: PointState, available: bool, reason: str, by: str, now: float, fx: list[Effect]
    ) -> None:
        """An operator takes ``p`` out of service or puts it back (rules.md "Out of service").

        Out of service: persisted with who and why, published, every queued
        reservation cancelled (``point_disabled``); a running session goes on. The
        same state again with the same reason changes nothing and publishes nothing.
        """
        out = not available
        reason = reason if out else ""
        if p.out_of_service == out and p.oos_reason == reason:
            return
        p.out_of_service, p.oos_reason, p.oos_by = out, reason, by if out else ""
        fx.append(Persist("point", p.id, p.static_record()))
        self.publish(
            fx, PointAvailability(point_id=p.id, available=available, reason=reason, by=by), now
        )
        if out:
            for r in list(p.queue):
                self.cancel(r, now, fx, "point_disabled", push=True)
        self.notify_availability(p, fx)
        self.refresh(p, now, fx)

    def notify_availability(self, p: PointState, fx: list[Effect]) -> None:
        """Tell a station that asked for it whether its point is in service."""
        if p.availability_notices:
            notice = Availability(available=not p.out_of_service, reason=p.oos_reason)
            fx.append(SendStation(p.id, notice))

    def resend_hold(self, p: PointState, now: float, fx: list[Effect]) -> None:
        """Tell a (re)connected station about the turn it holds, if any."""
        if holds_turn(p) and p.queue[0].deadline is not None:
            self._hold(fx, p, p.queue[0], now)

    def point_view(self, p: PointState, distance: float | None, now: float) -> PointView:
        """The protocol's Point object (``distance`` omitted when None)."""
        return point_view(p, self._cfg.queue_capacity, distance, self.wait_minutes(p, now))

    def encoded_points(self, hits: list[tuple[float, PointState]], now: float) -> bytes:
        """``[Point, ...]`` as JSON for ``(distance_km, point)`` hits, from cached views."""

        def wait(p: PointState) -> int:
            return self.wait_minutes(p, now)

        return self._views.encode_list(hits, wait)

    def wait_minutes(self, p: PointState, now: float) -> int:
        """Estimated minutes until a reservation made now would get the turn.

        The running session needs the energy it still lacks at the point's power;
        every queued reservation starts no earlier than its ETA and then charges a
        typical session (:data:`TYPICAL_SESSION_KWH`).
        """
        s = p.session
        if s is None and p.pending is None and not p.queue:
            return 0  # the common case on the hot path of bateria/consulta
        power = p.potencia_kw if p.potencia_kw > 0 else 1.0
        t = now
        if s is not None:
            target = (s.nivel_carregar - s.nivel_inicial) / 100.0 * s.capacidade_kwh
            t += max(0.0, target - s.energy_reported) / power * 3600.0
        elif p.pending is not None:
            t += TYPICAL_SESSION_KWH / power * 3600.0
        for r in p.queue:
            t = max(t, r.created_at + r.eta_s) + TYPICAL_SESSION_KWH / power * 3600.0
        return max(0, math.ceil((t - now) / 60.0 - 1e-9))

    # --- vehicles -------------------------------------------------------------------

    def battery_report(
        self,
        vehicle_id: str,
        level: float,
        latitude: float,
        longitude: float,
        now: float,
        fx: list[Effect],
    ) -> None:
        """``vehicle.low_battery`` once when a level falls below ``low_battery``.

        Not again for that vehicle until it reports ``low_battery_rearm`` or more (in
        effect ``max(low_battery, low_battery_rearm)``: a report below ``low_battery``
        never re-arms), so a vehicle that polls while low makes one event (and its
        queries stay reads).
        """
        if level < self._cfg.low_battery:
            if vehicle_id not in self._low_battery:
                self._low_battery.add(vehicle_id)
                self.publish(
                    fx,
                    VehicleLowBattery(
                        vehicle_id=vehicle_id,
                        nivel_bateria=level,
                        latitude=latitude,
                        longitude=longitude,
                    ),
                    now,
                )
        elif level >= self._cfg.low_battery_rearm:
            self._low_battery.discard(vehicle_id)

    # --- queues and turns -----------------------------------------------------------

    def _advance(self, p: PointState, now: float, fx: list[Effect]) -> None:
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
        head.deadline = turn_deadline(head, now, self._cfg.hold_s)
        self._persist_reservation(fx, head)
        expira = format_timestamp(head.deadline)
        fx.append(
            Push(
                head.vehicle_id,
                "sua_vez",
                SuaVez(id_ponto_recarga=p.id, reservation_id=head.id, expira_em=expira),
            )
        )
        self.publish(
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
        self._timers.schedule(head.deadline, "expire", head.id, head.deadline)

    def new_reservation(
        self, p: PointState, vehicle_id: str, eta_s: float, now: float, fx: list[Effect]
    ) -> Reservation:
        """Queue a new reservation at ``p`` (the caller checked capacity)."""
        self._order += 1
        r = Reservation(
            id=self._new_id("res"),
            vehicle_id=vehicle_id,
            point_id=p.id,
            created_at=now,
            eta_s=eta_s,
            order=self._order,
        )
        p.queue.append(r)
        self._res_by_vehicle[r.vehicle_id] = r
        self._res_by_id[r.id] = r
        self._persist_reservation(fx, r)
        return r

    def _forget_reservation(self, p: PointState, r: Reservation, fx: list[Effect]) -> None:
        p.queue.remove(r)
        if self._res_by_vehicle.get(r.vehicle_id) is r:
            del self._res_by_vehicle[r.vehicle_id]
        self._res_by_id.pop(r.id, None)
        fx.append(Persist("reservation", r.id, None))

    def _drop_reservation(self, r: Reservation, fx: list[Effect]) -> None:
        """Take ``r`` out of every table; release the station's hold if it had the turn."""
        p = self._points[r.point_id]
        self._forget_reservation(p, r, fx)
        if r.turn_started_at is not None:
            fx.append(SendStation(p.id, Release(cmd_id=self._new_id("cmd"), reservation_id=r.id)))

    def cancel(self, r: Reservation, now: float, fx: list[Effect], motivo: str, push: bool) -> None:
        self._drop_reservation(r, fx)
        self.publish(
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

    def _expire(self, r: Reservation, now: float, fx: list[Effect]) -> None:
        self._drop_reservation(r, fx)
        fx.append(
            Push(
                r.vehicle_id,
                "reserva_expirada",
                ReservaExpirada(id_ponto_recarga=r.point_id, reservation_id=r.id),
            )
        )
        self.publish(
            fx,
            ReservationExpired(reservation_id=r.id, vehicle_id=r.vehicle_id, point_id=r.point_id),
            now,
        )
        self.refresh(self._points[r.point_id], now, fx)

    # --- starts and sessions --------------------------------------------------------

    def begin_start(
        self,
        p: PointState,
        conn: int,
        request_id: Any,
        vehicle_id: str,
        data: Chegada,
        reservation_id: str | None,
        now: float,
        fx: list[Effect],
    ) -> None:
        """Ask the station to start; the vehicle's reply waits for its ``ack``."""
        session_id = self._new_id("ses")
        start = Start(
            cmd_id=self._new_id("cmd"),
            session_id=session_id,
            vehicle_id=vehicle_id,
            nivel_bateria=data.nivel_bateria,
            nivel_carregar=data.nivel_carregar,
            capacidade_kwh=data.capacidade_kwh,
        )
        fx.append(SendStation(p.id, start))
        pend = PendingStart(
            cmd_id=start.cmd_id,
            session_id=start.session_id,
            vehicle_id=vehicle_id,
            point_id=p.id,
            conn=conn,
            request_id=request_id,
            nivel_bateria=data.nivel_bateria,
            nivel_carregar=data.nivel_carregar,
            capacidade_kwh=data.capacidade_kwh,
            payment_method=data.metodo_pagamento,
            reservation_id=reservation_id,
            deadline=now + self._cfg.ack_timeout_s,
        )
        self._track_start(p, pend)
        fx.append(Persist("meta", pending_key(pend.session_id), pend.record()))

    def _track_start(self, p: PointState, pend: PendingStart) -> None:
        self._pending[pend.cmd_id] = pend
        p.pending = pend
        self._timers.schedule(pend.deadline, "ack", pend.cmd_id)

    def _retire_start(self, pend: PendingStart, fx: list[Effect]) -> PointState:
        p = self._points[pend.point_id]
        if p.pending is pend:
            p.pending = None
        self._pending.pop(pend.cmd_id, None)
        fx.append(Persist("meta", pending_key(pend.session_id), None))
        return p

    def station_ack(
        self, point_id: str, cmd_id: str, ok: bool, error: str | None, now: float, fx: list[Effect]
    ) -> None:
        """The station answered a command: a pending start begins or fails.

        Only the point the command went to may answer it; another point's ack is
        refused (``Rejected``) and changes nothing.
        """
        wait = self._holds.get(cmd_id)
        if wait is not None:
            if wait.point_id != point_id:
                fx.append(Rejected("stations", "not_command_owner", f"{point_id!r} acked {cmd_id}"))
            else:
                self._hold_answered(cmd_id, ok, error, now, fx)
            return
        pend = self._pending.get(cmd_id)
        owner = pend.point_id if pend is not None else self._abandoned.get(cmd_id, (None,))[0]
        if owner is not None and owner != point_id:
            fx.append(Rejected("stations", "not_command_owner", f"{point_id!r} acked {cmd_id}"))
            return
        if pend is None:
            late = self._abandoned.pop(cmd_id, None)
            if late is not None and ok:
                # the station started after we gave up on it: make it stop again
                self.send_stop(fx, late[0], late[1])
            elif late is None:
                self._counters["acks_unknown"] += 1
            return
        if ok:
            self.start_session(pend, now, fx)
        else:
            self.fail_start(pend, now, fx, error or "refused")

    def start_session(self, pend: PendingStart, now: float, fx: list[Effect]) -> None:
        """The station acked ``start``: the reservation becomes a running session."""
        p = self._retire_start(pend, fx)
        if pend.reservation_id is not None:
            r = self._res_by_id.get(pend.reservation_id)
            if r is not None:
                self._forget_reservation(p, r, fx)
        s = Session(
            id=pend.session_id,
            vehicle_id=pend.vehicle_id,
            point_id=p.id,
            started_at=now,
            nivel_inicial=pend.nivel_bateria,
            nivel_carregar=pend.nivel_carregar,
            capacidade_kwh=pend.capacidade_kwh,
            payment_method=pend.payment_method,
            price_kwh=to_decimal(p.preco_kwh),
            reservation_id=pend.reservation_id,
            boot_id=p.boot_id,
        )
        self._sessions[s.id] = s
        self._session_by_vehicle[s.vehicle_id] = s
        p.session = s
        self.persist_session(fx, s)
        self.publish(
            fx,
            ChargingStarted(
                session_id=s.id,
                vehicle_id=s.vehicle_id,
                point_id=p.id,
                reservation_id=s.reservation_id,
                started_at=format_timestamp(now),
                price_kwh=float(s.price_kwh),
                payment_method=s.payment_method,
                nivel_bateria=s.nivel_inicial,
                nivel_carregar=s.nivel_carregar,
                capacidade_kwh=s.capacidade_kwh,
            ),
            now,
        )
        if pend.conn != NO_CONNECTION:  # a start restored after a crash has no requester
            fx.append(
                Reply(
                    pend.conn,
                    pend.request_id,
                    "chegada_response",
                    Started(
                        message="Charging started",
                        vehicle_id=s.vehicle_id,
                        id_ponto_recarga=p.id,
                        session_id=s.id,
                    ),
                )
            )
        self.refresh(p, now, fx)

    def fail_start(self, pend: PendingStart, now: float, fx: list[Effect], why: str) -> None:
        """``start`` was refused, not acked in time, or unroutable: ``point_unreachable``."""
        p = self._retire_start(pend, fx)
        if len(self._abandoned) >= MAX_ABANDONED:
            self._abandoned.clear()
        self._abandoned[pend.cmd_id] = (pend.point_id, pend.session_id)
        if pend.conn != NO_CONNECTION:  # a start restored after a crash has no requester
            err = PointUnreachable(f"Station did not confirm the start ({why}); reservation kept")
            fx.append(
                Reply(
                    pend.conn,
                    pend.request_id,
                    "chegada_response",
                    refusal(err, pend.vehicle_id, pend.point_id),
                )
            )
        self.refresh(p, now, fx)

    def session_complete(
        self, point_id: str, session_id: str, now: float, fx: list[Effect]
    ) -> Session | None:
        """The running session a ``session_complete`` closes, or None (counted).

        A duplicate of a billed session and an unknown session give None. If
        the start is still pending there, the lost ack is taken as given.
        """
        if session_id in self._accounts.billed:
            self._counters["session_duplicates"] += 1
            return None
        s = self._sessions.get(session_id)
        if s is None:
            p = self._points.get(point_id)
            pend = p.pending if p is not None else None
            if pend is not None and pend.session_id == session_id:
                # the ack was lost but the station charged: the session did start
                self.start_session(pend, now, fx)
                s = self._sessions.get(session_id)
        if s is None:
            self._counters["sessions_unknown"] += 1
        return s

    def station_unreachable(self, point_id: str, now: float, fx: list[Effect]) -> None:
        """The ROUTER could not route to the station: a pending start fails at once."""
        p = self._points.get(point_id)
        if p is not None and p.pending is not None:
            self.fail_start(p.pending, now, fx, "station unreachable")
        if p is not None and p.commands:
            # no command connection: its holds are taken as held (the queue is the truth)
            p.commands = p.confirms_holds = False
            for cmd_id in [c for c, w in self._holds.items() if w.point_id == point_id]:
                self._hold_answered(cmd_id, True, None, now, fx)

    def bill(
        self,
        s: Session,
        now: float,
        fx: list[Effect],
        energy: Decimal,
        nivel_final: float,
        reason: str,
    ) -> None:
        """Close ``s``, record it in the account and tell everybody (exactly once)."""
        s.ended_at = now
        s.energy = energy
        s.cost = session_cost(energy, s.price_kwh)
        s.nivel_final = nivel_final
        s.reason = reason
        self._sessions.pop(s.id, None)
        if self._session_by_vehicle.get(s.vehicle_id) is s:
            del self._session_by_vehicle[s.vehicle_id]
        p = self._points.get(s.point_id)
        if p is not None and p.session is s:
            p.session = None
        e = kwh3(energy)
        cost = float(s.cost)
        self.publish(
            fx,
            ChargingCompleted(
                session_id=s.id,
                vehicle_id=s.vehicle_id,
                point_id=s.point_id,
                started_at=format_timestamp(s.started_at),
                ended_at=format_timestamp(now),
                energy_kwh=e,
                price_kwh=float(s.price_kwh),
                cost=cost,
                currency=CURRENCY,
                payment_method=s.payment_method,
                reason=reason,
            ),
            now,
        )
        s.billed_seq = self._seq
        self._accounts.record(s)
        self.persist_session(fx, s)
        fx.append(
            Push(
                s.vehicle_id,
                "custo_final",
                CustoFinal(
                    vehicle_id=s.vehicle_id,
                    id_ponto_recarga=s.point_id,
                    session_id=s.id,
                    cost=cost,
                    moeda=CURRENCY,
                    payment_method=s.payment_method,
                    energia_kwh=e,
                    nivel_inicial=s.nivel_inicial,
                    nivel_final=nivel_final,
                    duracao_s=round(now - s.started_at, 3),
                ),
            )
        )
        fx.append(
            Push(
                s.vehicle_id,
                "encerramento",
                Encerramento(
                    id_veiculo=s.vehicle_id,
                    id_ponto_recarga=s.point_id,
                    session_id=s.id,
                    energia_consumida=round(nivel_final - s.nivel_inicial, 3),
                    energia_kwh=e,
                ),
            )
        )
        if p is not None:
            self.refresh(p, now, fx)

    def bill_fault(self, s: Session, now: float, fx: list[Effect]) -> None:
        """Close a session the station can no longer report: the energy last reported."""
        reported = s.energy_reported if math.isfinite(s.energy_reported) else 0.0
        energy = to_decimal(reported)
        cap = to_decimal(s.capacidade_kwh)
        gained = float(energy / cap * 100) if cap > 0 else 0.0
        nivel_final = min(100.0, s.nivel_inicial + gained)
        self.bill(s, now, fx, energy, round(nivel_final, 3), "fault")

    # --- restoring from the store ---------------------------------------------------

    def restore_seq(self, last_seq: int) -> None:
        self._seq = max(self._seq, int(last_seq))

    def restore_point(self, p: PointState, now: float) -> None:
        """A persisted point: offline until heard (``indisponivel`` if out of service), its
        grace period starting at ``now``."""
        p.window_s = self.window(p.interval_s)
        p.unusable_since = now
        p.estado = derive_estado(p)
        self._points[p.id] = p
        self._index.put(p.id, p.latitude, p.longitude)

    def restore_reservation(self, r: Reservation) -> None:
        """Queue a persisted reservation (call in ``order``); skipped if it cannot stand."""
        p = self._points.get(r.point_id)
        if p is None or r.vehicle_id in self._res_by_vehicle:
            return
        p.queue.append(r)
        self._res_by_vehicle[r.vehicle_id] = r
        self._res_by_id[r.id] = r
        self._order = max(self._order, r.order)
        if r.deadline is not None:
            self._timers.schedule(r.deadline, "expire", r.id, r.deadline)

    def restore_session(self, s: Session) -> None:
        """A billed session goes to its account; a running one back to its point."""
        if s.ended_at is not None:
            self._accounts.record(s)
            return
        p = self._points.get(s.point_id)
        if p is None:
            return
        self._sessions[s.id] = s
        self._session_by_vehicle[s.vehicle_id] = s
        p.session = s

    def restore_start(self, pend: PendingStart) -> None:
        """A start sent before a crash whose ack never came back (see Core.restore)."""
        p = self._points.get(pend.point_id)
        if p is None or p.pending is not None or p.session is not None:
            return
        if pend.session_id in self._sessions or pend.session_id in self._accounts.billed:
            return
        self._track_start(p, pend)

    def restore_graces(self, now: float) -> None:
        """Every restored point with a queue or a session starts its grace period."""
        for p in self._points.values():
            if p.queue or p.session is not None:
                self._timers.schedule(now + self._cfg.offline_grace_s, "grace", p.id, now)

    # --- timers ---------------------------------------------------------------------

    def next_due(self) -> float | None:
        while True:
            top = self._timers.peek()
            if top is None:
                return None
            if self._live(top[2], top[3], top[4]):
                return top[0]
            self._timers.discard_top()

    def _live(self, kind: str, key: str, token: float) -> bool:
        if kind == "offline":
            p = self._points.get(key)
            return p is not None and p.online
        if kind == "expire":
            r = self._res_by_id.get(key)
            return r is not None and r.deadline == token
        if kind == "grace":
            p = self._points.get(key)
            return p is not None and p.unusable_since == token and not p.usable
        if kind == "hold":
            return key in self._holds
        return key in self._pending

    def tick(self, now: float) -> list[Effect]:
        fx: list[Effect] = []
        while (entry := self._timers.pop_due(now)) is not None:
            _due, _order, kind, key, token = entry
            if kind == "offline":
                self._fire_offline(key, now, fx)
            elif kind == "expire":
                self._fire_expire(key, token, now, fx)
            elif kind == "grace":
                self._fire_grace(key, token, now, fx)
            elif kind == "hold":
                if key in self._holds:  # no answer in time: taken as held
                    self._hold_answered(key, True, None, now, fx)
            else:
                pend = self._pending.get(key)
                if pend is not None:
                    self.fail_start(pend, now, fx, "timeout")
        return fx

    def _fire_offline(self, point_id: str, now: float, fx: list[Effect]) -> None:
        p = self._points.get(point_id)
        if p is None:
            return
        p.offline_timer_at = None
        if not p.online:
            return
        due = p.last_heard + p.window_s
        if due > now:
            p.offline_timer_at = due = offline_slot(due)
            self._timers.schedule(due, "offline", p.id)
            return
        p.online = False
        self._points_online -= 1
        if p.session is not None:
            # keep the energy last reported: a restart may have to bill it as a fault
            self.persist_session(fx, p.session)
        self.publish(
            fx, PointOffline(point_id=p.id, last_heard=format_timestamp(p.last_heard)), now
        )
        self.refresh(p, now, fx)

    def _fire_expire(self, res_id: str, token: float, now: float, fx: list[Effect]) -> None:
        r = self._res_by_id.get(res_id)
        if r is None or r.deadline != token:
            return
        p = self._points[r.point_id]
        if p.pending is not None and p.pending.reservation_id == r.id:
            # the vehicle arrived and the station is being asked to start: wait for it
            self._timers.schedule(max(p.pending.deadline, now), "expire", r.id, token)
            return
        self._expire(r, now, fx)

    def _fire_grace(self, point_id: str, token: float, now: float, fx: list[Effect]) -> None:
        p = self._points.get(point_id)
        if p is None or p.usable or p.unusable_since != token:
            return
        motivo = "point_offline" if not p.online else "point_unavailable"
        for r in list(p.queue):
            self.cancel(r, now, fx, motivo, push=True)
        if p.session is not None and not p.online:
            self.bill_fault(p.session, now, fx)
        self.refresh(p, now, fx)

    # --- views ----------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """``{"seq", "points", "queues", "sessions"}`` consistent as of ``seq``, as plain
        data; each point also has ``vehicle_id``, ``session_id`` and ``last_heard`` (or
        None)."""
        points = []
        for _pid, p in sorted(self._points.items()):
            view = msgspec.to_builtins(self.point_view(p, None, now))
            view["vehicle_id"] = p.session.vehicle_id if p.session is not None else None
            view["session_id"] = p.session.id if p.session is not None else None
            view["last_heard"] = format_timestamp(p.last_heard) if p.last_heard > 0 else None
            view["online"] = p.online  # estado says indisponivel for a point out of service
            points.append(view)
        queues = {
            pid: [r.view(i + 1) for i, r in enumerate(p.queue)]
            for pid, p in self._points.items()
            if p.queue
        }
        running = sorted(self._sessions.values(), key=lambda s: (s.started_at, s.id))
        sessions = [s.view() for s in running]
        snap = {"seq": self._seq, "points": points, "queues": queues, "sessions": sessions}
        return msgspec.to_builtins(snap)  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return {
            "points": len(self._points),
            "points_online": self._points_online,
            "points_by_state": dict(Counter(p.estado for p in self._points.values())),
            "sessions_active": len(self._sessions),
            "reservations": len(self._res_by_id),
            "pending_starts": len(self._pending),
            "queues": {pid: len(p.queue) for pid, p in self._points.items() if p.queue},
            "timers": len(self._timers),
            "last_seq": self._seq,
            **self._counters,
        }
