"""The core's state and the rules that cross its tables.

:class:`Engine` composes the owners of the core state, each the only writer of
its aggregate: :class:`.point_table.PointTable` (points, their index and
liveness), :class:`.reservation_table.ReservationTable` (queues and turns),
:class:`.session_table.SessionTable` (starts, running sessions, billing),
:class:`.accounts.Accounts` (billed sessions), plus the event log and the
timer heap they share (:mod:`.shared`, :mod:`.timers`). The engine itself keeps
the rules that span them: the ``refresh`` funnel (usability, grace periods,
passing the turn, ``point.status``), operators taking points out of service,
low-battery events, the typed timer dispatch (:meth:`tick`), snapshots and
statistics. Every method appends its effects to the ``fx`` list it is given,
in the order the edges must carry them out.

Vehicle requests and station traffic are dispatched by
:mod:`broker.core.vehicle_requests` and :mod:`broker.core.stations`, which
read through the query methods and change state only through the owners'
methods (``register_point``, ``new_reservation``, ``begin_start``, ``bill``
and the point table's report methods).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, assert_never

import msgspec

from broker.core.accounts import Accounts
from broker.core.config import CoreConfig
from broker.core.effects import Effect, Rejected, SendStation
from broker.core.point_table import PointTable
from broker.core.points import PointState, derive_estado, is_available, is_faulted
from broker.core.queues import Reservation
from broker.core.read_path import wait_minutes
from broker.core.reservation_table import ReservationTable
from broker.core.session_table import SessionTable
from broker.core.sessions import Session
from broker.core.shared import Shared
from broker.core.sites import Sites
from broker.core.timers import (
    AckTimeout,
    GraceEnd,
    HoldTimeout,
    OfflineCheck,
    ParkingEnd,
    Timer,
    TurnDeadline,
)
from common.errors import NotCommandOwner
from common.events import PointStatus, VehicleLowBattery
from common.messages import Availability, BrokerToStation
from common.replies import SessionView, Statement
from common.timeutil import format_timestamp


class Engine:
    """All state of the broker core; see :mod:`broker.core` for the theory of operation."""

    def __init__(self, config: CoreConfig, new_id: Callable[[str], str]) -> None:
        self.config: Final[CoreConfig] = config  # frozen: reading it changes nothing
        self._shared = shared = Shared(config, new_id)
        self._log = shared.log
        self._timers = shared.timers
        self._counters = shared.counters
        self.points = PointTable(shared)
        self.reservations = ReservationTable(shared, self.points)
        self._accounts = Accounts()
        #: the owner of sites and their power (energy.md); see :mod:`broker.core.sites`
        self.sites = Sites(new_id, self._log.publish, self._power_changed)
        self.sessions = SessionTable(
            shared, self.points, self.reservations, self._accounts, self.refresh, self.sites
        )
        self._low_battery: set[str] = set()  # vehicles told about; see battery_report
        # lookups as the tables' own bound methods (no call overhead on the request path)
        #: the point with this id, or None
        self.point: Callable[[str], PointState | None] = self.points.get
        self.reservation_of: Callable[[str], Reservation | None] = self.reservations.of
        self.session_of: Callable[[str], Session | None] = self.sessions.of
        # the owners' rules, under the names the dispatchers call them by
        self.publish = self._log.publish
        self.may_register = self.points.may_register
        self.register_point = self.points.add
        self.window = self.points.window
        self.heard = self.points.heard
        self.arm_offline = self.points.arm_offline
        self.nearest = self.points.nearest
        self.point_view = self.points.view
        self.encoded_points = self.points.encoded
        self.estimates = self.points.reads.estimates
        self.point_ids = self.points.ids
        self.tariffs = shared.tariffs
        self.set_session_power = self.sessions.set_power
        self.unplug = self.sessions.unplug
        self.new_reservation = self.reservations.new
        self.reservations_of_address = self.reservations.of_address
        self.cancel = self.reservations.cancel
        self.resend_hold = self.reservations.resend_hold
        self.running_session = self.sessions.running
        self.pending_of = self.sessions.pending_of
        self.begin_start = self.sessions.begin_start
        self.wait_hold = self.reservations.wait_hold
        self.start_session = self.sessions.start_session
        self.fail_start = self.sessions.fail_start
        self.session_complete = self.sessions.session_complete
        self.send_stop = self.sessions.send_stop
        self.persist_session = self.sessions.persist
        self.bill = self.sessions.bill
        self.bill_fault = self.sessions.bill_fault
        self.restore_point = self.points.restore
        self.restore_reservation = self.reservations.restore
        self.restore_session = self.sessions.restore_session
        self.restore_start = self.sessions.restore_start
        self.restore_seq = self._log.restore

    # --- reading --------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The seq of the last event published (0 before any)."""
        return self._log.seq

    def count(self, name: str) -> None:
        """Count one occurrence of ``name`` in :meth:`stats`."""
        self._counters[name] += 1

    def counter(self, name: str) -> int:
        return self._counters[name]

    def statement(self, vehicle_id: str) -> Statement:
        return self._accounts.statement(vehicle_id)

    def has_history(self, vehicle_id: str) -> bool:
        """Whether ``vehicle_id`` has a reservation, a session or a bill."""
        return (
            self.reservation_of(vehicle_id) is not None
            or self.session_of(vehicle_id) is not None
            or self._accounts.has(vehicle_id)
        )

    def all_statements(self) -> dict[str, Statement]:
        return self._accounts.all_statements()

    def wait_minutes(self, p: PointState, now: float) -> int:
        """Estimated minutes until a reservation made now would get the turn."""
        return wait_minutes(p, now)

    def live_sessions(self) -> list[tuple[str, str, str, float, float]]:
        """Every running or starting session as ``(session_id, vehicle_id, point_id,
        started_at, potencia_kw)`` (for sites that change)."""
        out = []
        for s in self.sessions.running_sorted():
            p = self.points.get(s.point_id)
            if p is not None and s.charged_at is None:  # a parked session draws nothing
                out.append((s.id, s.vehicle_id, p.id, s.started_at, p.potencia_kw))
        for p in self.points:
            pend = p.pending
            if pend is not None:
                out.append((pend.session_id, pend.vehicle_id, p.id, pend.deadline, p.potencia_kw))
        return out

    def _power_changed(self, session_id: str, kw: float, now: float) -> None:
        """The power a session on a site may draw changed (estimates use it)."""
        s = self.sessions.running(session_id)
        if s is not None:
            s.allowed_kw = kw
            if s.tariff is not None:
                s.set_power(kw, now)  # its charging periods split here (docs/tariffs.md)

    def session_view(self, s: Session, now: float) -> SessionView:
        """``s`` as ``status`` shows it: on a site with its allowed power and the
        minutes to its target (``aguardando_energia`` while paused)."""
        view = s.view()
        allowed = self.sites.allowed_kw(s.id) if self.sites else None
        if allowed is None:
            return view
        power = allowed if allowed > 0 else self.sites.resume_kw(s.id)
        target = (s.nivel_carregar - s.nivel_inicial) / 100.0 * s.capacidade_kwh
        left_s = max(0.0, target - s.energy_reported) / max(power, 0.1) * 3600.0
        return msgspec.structs.replace(
            view,
            estado="aguardando_energia" if allowed <= 0 else "carregando",
            potencia_kw=allowed,
            eta_min=max(0, math.ceil(left_s / 60.0 - 1e-9)),
        )

    def send(self, fx: list[Effect], point_id: str, message: BrokerToStation) -> None:
        fx.append(SendStation(point_id, message))

    # --- the funnel -----------------------------------------------------------------

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
                    self._start_grace(p, now)
        if usable:
            self.reservations.give_turn(p, now, fx)
        estado = derive_estado(p)
        if estado != p.estado:
            p.estado = estado
            self._log.publish(
                fx,
                PointStatus(
                    point_id=p.id,
                    estado=estado,
                    available=is_available(p),
                    queue_size=len(p.queue),
                ),
                now,
            )

    def _start_grace(self, p: PointState, now: float) -> None:
        self._timers.schedule(now + self.config.offline_grace_s, GraceEnd(p.id, now))

    def set_availability(
        self, p: PointState, available: bool, reason: str, by: str, now: float, fx: list[Effect]
    ) -> None:
        """An operator takes ``p`` out of service or puts it back (rules.md "Out of service").

        Out of service: persisted with who and why, published, every queued
        reservation cancelled (``point_disabled``); a running session goes on. The
        same state again with the same reason changes nothing and publishes nothing.
        """
        if not self.points.set_out_of_service(p, available, reason, by, now, fx):
            return
        if not available:
            for r in list(p.queue):
                self.reservations.cancel(r, now, fx, "point_disabled", push=True)
        self.notify_availability(p, fx)
        self.refresh(p, now, fx)

    def notify_availability(self, p: PointState, fx: list[Effect]) -> None:
        """Tell a station that asked for it whether its point is in service."""
        if p.availability_notices:
            notice = Availability(available=not p.out_of_service, reason=p.oos_reason)
            fx.append(SendStation(p.id, notice))

    # --- station answers ------------------------------------------------------------

    def station_ack(
        self, point_id: str, cmd_id: str, ok: bool, error: str | None, now: float, fx: list[Effect]
    ) -> None:
        """The station answered a command: a hold decides its reservation (docs/protocol.md),
        a start begins or fails. Only the point the command went to may answer it."""
        wait = self.reservations.hold_of(cmd_id)
        if wait is None:
            self.sessions.station_ack(point_id, cmd_id, ok, error, now, fx)
        elif wait.point_id != point_id:
            fx.append(Rejected("stations", NotCommandOwner(f"{point_id!r} acked {cmd_id}")))
        else:
            self._hold_answered(cmd_id, ok, error, now, fx)

    def _hold_answered(
        self, cmd_id: str, ok: bool, error: str | None, now: float, fx: list[Effect]
    ) -> None:
        p = self.reservations.hold_answered(cmd_id, ok, error, now, fx)
        if p is not None:
            self.refresh(p, now, fx)  # the turn passes on

    def station_unreachable(self, point_id: str, now: float, fx: list[Effect]) -> None:
        """The ROUTER could not route to the station: a pending start fails at once; its
        holds are taken as held (no command connection: the queue is the truth)."""
        self.sessions.station_unreachable(point_id, now, fx)
        p = self.points.get(point_id)
        if p is not None and p.commands:
            self.points.unreachable(p)
            for cmd_id in self.reservations.holds_at(point_id):
                self._hold_answered(cmd_id, True, None, now, fx)

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
        if level < self.config.low_battery:
            if vehicle_id not in self._low_battery:
                self._low_battery.add(vehicle_id)
                event = VehicleLowBattery(
                    vehicle_id=vehicle_id,
                    nivel_bateria=level,
                    latitude=latitude,
                    longitude=longitude,
                )
                self._log.publish(fx, event, now)
        elif level >= self.config.low_battery_rearm:
            self._low_battery.discard(vehicle_id)

    def restore_graces(self, now: float) -> None:
        """Every restored point with a queue or a session starts its grace period."""
        for p in self.points:
            if p.queue or p.session is not None:
                self._start_grace(p, now)

    # --- timers ---------------------------------------------------------------------

    def next_due(self) -> float | None:
        due = self.sites.next_due() if self.sites else None
        while True:
            top = self._timers.peek()
            if top is None:
                return due
            if self._live(top[2]):
                return top[0] if due is None else min(due, top[0])
            self._timers.discard_top()

    def _live(self, timer: Timer) -> bool:
        """Whether ``timer`` still means something (its token matches the state)."""
        match timer:
            case OfflineCheck(point_id):
                p = self.points.get(point_id)
                return p is not None and p.online
            case TurnDeadline(reservation_id, deadline):
                r = self.reservations.by_id(reservation_id)
                return r is not None and r.deadline == deadline
            case GraceEnd(point_id, since):
                p = self.points.get(point_id)
                return p is not None and p.unusable_since == since and not p.usable
            case AckTimeout(cmd_id):
                return self.sessions.pending(cmd_id) is not None
            case HoldTimeout(cmd_id):
                return self.reservations.hold_of(cmd_id) is not None
            case ParkingEnd(session_id, since):
                return self.sessions.parked_since(session_id, since)
            case _:
                assert_never(timer)

    def tick(self, now: float) -> list[Effect]:
        """Fire every due timer whose token still matches; drop the stale ones."""
        fx: list[Effect] = []
        while (entry := self._timers.pop_due(now)) is not None:
            timer = entry[2]
            match timer:
                case OfflineCheck(point_id):
                    self._fire_offline(point_id, now, fx)
                case TurnDeadline(reservation_id, deadline):
                    self._fire_turn_deadline(reservation_id, deadline, now, fx)
                case GraceEnd(point_id, since):
                    self._fire_grace(point_id, since, now, fx)
                case AckTimeout(cmd_id):
                    self.sessions.ack_timeout(cmd_id, now, fx)
                case HoldTimeout(cmd_id):
                    if self.reservations.hold_of(cmd_id) is not None:  # taken as held
                        self._hold_answered(cmd_id, True, None, now, fx)
                case ParkingEnd(session_id, since):
                    self.sessions.parking_end(session_id, since, now, fx)
                case _:
                    assert_never(timer)
        if self.sites:
            self.sites.tick(now, fx)
        return fx

    def _fire_offline(self, point_id: str, now: float, fx: list[Effect]) -> None:
        p = self.points.get(point_id)
        if p is None or not self.points.offline_check(p, now):
            return
        if p.session is not None:
            # keep the energy last reported: a restart may have to bill it as a fault
            self.sessions.persist(fx, p.session)
        self.points.publish_offline(p, now, fx)
        self.refresh(p, now, fx)

    def _fire_turn_deadline(
        self, res_id: str, deadline: float, now: float, fx: list[Effect]
    ) -> None:
        r = self.reservations.by_id(res_id)
        if r is None or r.deadline != deadline:
            return
        p = self.points[r.point_id]
        if p.pending is not None and p.pending.reservation_id == r.id:
            # the vehicle arrived and the station is being asked to start: wait for it
            self.reservations.postpone(r, max(p.pending.deadline, now), deadline)
            return
        self.reservations.expire(r, now, fx)
        self.refresh(self.points[r.point_id], now, fx)

    def _fire_grace(self, point_id: str, since: float, now: float, fx: list[Effect]) -> None:
        p = self.points.get(point_id)
        if p is None or p.usable or p.unusable_since != since:
            return
        motivo = "point_offline" if not p.online else "point_unavailable"
        for r in list(p.queue):
            self.reservations.cancel(r, now, fx, motivo, push=True)
        if p.session is not None and not p.online:
            self.sessions.bill_fault(p.session, now, fx)
        self.refresh(p, now, fx)

    # --- views ----------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """``{"seq", "points", "queues", "sessions"}`` consistent as of ``seq``, as plain
        data; each point also has ``vehicle_id``, ``session_id`` and ``last_heard`` (or
        None)."""
        points = []
        for p in self.points.sorted():
            view = msgspec.to_builtins(self.points.view(p, None, now))
            view["vehicle_id"] = p.session.vehicle_id if p.session is not None else None
            view["session_id"] = p.session.id if p.session is not None else None
            view["last_heard"] = format_timestamp(p.last_heard) if p.last_heard > 0 else None
            view["online"] = p.online  # estado says indisponivel for a point out of service
            points.append(view)
        queues = {
            p.id: [r.view(i + 1) for i, r in enumerate(p.queue)] for p in self.points if p.queue
        }
        sessions = []
        for s in self.sessions.running_sorted():
            view = msgspec.to_builtins(self.session_view(s, now))
            view["custo_parcial"] = self.sessions.running_cost(s, now)  # cost so far
            sessions.append(view)
        snap = {"seq": self._log.seq, "points": points, "queues": queues, "sessions": sessions}
        if self.sites:
            snap["sites"] = self.sites.view()
        if len(self.tariffs):  # what a gateway's replica prices with (docs/tariffs.md)
            snap["tariffs"] = self.tariffs.snapshot()
        # to_builtins of a dict of builtins is a dict; msgspec types it Any
        return msgspec.to_builtins(snap)  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return {
            "points": len(self.points),
            "points_online": self.points.online,
            "points_by_state": dict(Counter(p.estado for p in self.points)),
            "sessions_active": len(self.sessions),
            "reservations": len(self.reservations),
            "pending_starts": self.sessions.pending_count,
            "queues": {p.id: len(p.queue) for p in self.points if p.queue},
            "timers": len(self._timers),
            "last_seq": self._log.seq,
            **self._counters,
            "sites": self.sites.figures() if self.sites else {},
        }
