"""The sessions table: starts in progress, running sessions, and billing them once.

:class:`SessionTable` is the only writer of :class:`PendingStart` and
:class:`Session` objects and of the point links to them (``pending``,
``session``). A start goes ``begin_start`` -> the station's ``ack``
(``start_session``) or its refusal, absence or unreachability
(``fail_start``); a running session ends in :meth:`bill` (exactly once, into
the vehicle's account). Each change that may alter a point's situation ends in
the engine's ``refresh`` funnel, handed in as ``refresh``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

from msgspec import UNSET, UnsetType

from broker.core.accounts import Accounts
from broker.core.effects import Effect, Persist, Push, Rejected, Reply, SendStation
from broker.core.point_table import PointTable
from broker.core.points import PointState
from broker.core.reservation_table import ReservationTable
from broker.core.sessions import (
    CURRENCY,
    MILLI,
    NO_CONNECTION,
    PendingStart,
    Session,
    bounded_energy,
    energy_bound_kwh,
    pending_key,
    session_cost,
    to_decimal,
)
from broker.core.shared import Shared
from broker.core.sites import Sites
from broker.core.timers import AckTimeout, ParkingEnd
from common.cdr import energy_price_now, price_compiled
from common.errors import EnergyAboveBound, NotCommandOwner, PointUnreachable
from common.events import ChargingCompleted, ChargingStarted
from common.messages import Chegada, Start, Stop
from common.replies import CustoFinal, Encerramento, Started, refusal
from common.timeutil import format_timestamp

MAX_ABANDONED: Final = 1024

Refresh = Callable[[PointState, float, list[Effect]], None]


def kwh3(value: Decimal) -> float:
    """Energy for the wire: kWh with three decimals."""
    return float(value.quantize(MILLI, rounding=ROUND_HALF_UP))


class SessionTable:
    """Pending starts (by command id) and running sessions (by id and by vehicle)."""

    def __init__(
        self,
        shared: Shared,
        points: PointTable,
        reservations: ReservationTable,
        accounts: Accounts,
        refresh: Refresh,
        sites: Sites,
    ) -> None:
        self._s = shared
        self._sites = sites  # the power of sessions on sites (energy.md)
        self._points = points
        self._reservations = reservations
        self._accounts = accounts
        self._refresh = refresh
        self._pending: dict[str, PendingStart] = {}
        self._abandoned: dict[str, tuple[str, str]] = {}
        self._running: dict[str, Session] = {}
        self._by_vehicle: dict[str, Session] = {}
        #: the running session of this vehicle, or None (the table's own bound method)
        self.of: Callable[[str], Session | None] = self._by_vehicle.get
        #: the running session with this id, or None
        self.running: Callable[[str], Session | None] = self._running.get
        #: the start in progress for this command id, or None
        self.pending: Callable[[str], PendingStart | None] = self._pending.get

    def __len__(self) -> int:
        return len(self._running)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def running_sorted(self) -> list[Session]:
        return sorted(self._running.values(), key=lambda s: (s.started_at, s.id))

    def pending_of(self, vehicle_id: str) -> PendingStart | None:
        """The start in progress for ``vehicle_id``, if any."""
        for pend in self._pending.values():
            if pend.vehicle_id == vehicle_id:
                return pend
        return None

    def persist(self, fx: list[Effect], s: Session) -> None:
        fx.append(Persist("session", s.id, s.record()))

    def send_stop(self, fx: list[Effect], point_id: str, session_id: str) -> None:
        fx.append(SendStation(point_id, Stop(cmd_id=self._s.new_id("cmd"), session_id=session_id)))

    # --- starts ---------------------------------------------------------------------

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
        session_id = self._s.new_id("ses")
        kw = None
        if self._sites:
            kw = self._sites.start(session_id, vehicle_id, p.id, p.potencia_kw, now, fx)
        start = Start(
            cmd_id=self._s.new_id("cmd"),
            session_id=session_id,
            vehicle_id=vehicle_id,
            nivel_bateria=data.nivel_bateria,
            nivel_carregar=data.nivel_carregar,
            capacidade_kwh=data.capacidade_kwh,
            kw=kw,
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
            deadline=now + self._s.cfg.ack_timeout_s,
        )
        self._track(p, pend)
        fx.append(Persist("meta", pending_key(pend.session_id), pend.record()))

    def _track(self, p: PointState, pend: PendingStart) -> None:
        self._pending[pend.cmd_id] = pend
        p.pending = pend
        self._s.timers.schedule(pend.deadline, AckTimeout(pend.cmd_id))

    def _retire(self, pend: PendingStart, fx: list[Effect]) -> PointState:
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
        refused (``Rejected``) and changes nothing. An ack of a ``limit`` goes to the sites.
        """
        if self._sites.acked(cmd_id, ok, now, fx):
            return
        pend = self._pending.get(cmd_id)
        owner = pend.point_id if pend is not None else self._abandoned.get(cmd_id, (None,))[0]
        if owner is not None and owner != point_id:
            fx.append(Rejected("stations", NotCommandOwner(f"{point_id!r} acked {cmd_id}")))
            return
        if pend is None:
            late = self._abandoned.pop(cmd_id, None)
            if late is not None and ok:
                # the station started after we gave up on it: make it stop again
                self.send_stop(fx, late[0], late[1])
            elif late is None:
                self._s.counters["acks_unknown"] += 1
            return
        if ok:
            self.start_session(pend, now, fx)
        else:
            self.fail_start(pend, now, fx, error or "refused")

    def start_session(self, pend: PendingStart, now: float, fx: list[Effect]) -> None:
        """The station acked ``start``: the reservation becomes a running session."""
        p = self._retire(pend, fx)
        if pend.reservation_id is not None:
            r = self._reservations.by_id(pend.reservation_id)
            if r is not None:
                self._reservations.forget(p, r, fx)
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
        s.allowed_kw = self._sites.allowed_kw(s.id) if self._sites else None
        book = self._s.tariffs
        tariff = book.tariff_for(p.id, now)
        if tariff is not None:
            s.tariff = tariff
            s.powers = [(now, p.potencia_kw if s.allowed_kw is None else s.allowed_kw)]
            view = book.view(p.id, p.potencia_kw, now)
            s.price_kwh = (
                to_decimal(view.energy_kwh)
                if view is not None
                else energy_price_now(book.compiled(tariff), now)
            )
        self._running[s.id] = s
        self._by_vehicle[s.vehicle_id] = s
        p.session = s
        self.persist(fx, s)
        self._s.log.publish(
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
            started = Started(
                message="Charging started",
                vehicle_id=s.vehicle_id,
                id_ponto_recarga=p.id,
                session_id=s.id,
            )
            fx.append(Reply(pend.conn, pend.request_id, "chegada_response", started))
        self._refresh(p, now, fx)

    def fail_start(self, pend: PendingStart, now: float, fx: list[Effect], why: str) -> None:
        """``start`` was refused, not acked in time, or unroutable: ``point_unreachable``."""
        p = self._retire(pend, fx)
        self._sites.end(pend.session_id, now, fx)
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
        self._refresh(p, now, fx)

    def ack_timeout(self, cmd_id: str, now: float, fx: list[Effect]) -> None:
        """The ack timer of ``cmd_id`` fired: a start still pending fails."""
        pend = self._pending.get(cmd_id)
        if pend is not None:
            self.fail_start(pend, now, fx, "timeout")

    def station_unreachable(self, point_id: str, now: float, fx: list[Effect]) -> None:
        """The ROUTER could not route to the station: a pending start fails at once."""
        p = self._points.get(point_id)
        if p is not None and p.pending is not None:
            self.fail_start(p.pending, now, fx, "station unreachable")

    # --- completion and billing -----------------------------------------------------

    def session_complete(
        self, point_id: str, session_id: str, now: float, fx: list[Effect]
    ) -> Session | None:
        """The running session a ``session_complete`` closes, or None (counted).

        A duplicate of a billed session and an unknown session give None. If
        the start is still pending there, the lost ack is taken as given.
        """
        if session_id in self._accounts.billed:
            self._s.counters["session_duplicates"] += 1
            return None
        s = self._running.get(session_id)
        if s is None:
            p = self._points.get(point_id)
            pend = p.pending if p is not None else None
            if pend is not None and pend.session_id == session_id:
                # the ack was lost but the station charged: the session did start
                self.start_session(pend, now, fx)
                s = self._running.get(session_id)
        if s is None:
            self._s.counters["sessions_unknown"] += 1
        return s

    def bill(
        self,
        s: Session,
        now: float,
        fx: list[Effect],
        energy: Decimal,
        nivel_final: float,
        reason: str,
        *,
        realtime_power_kw: float | None = None,
        may_park: bool = True,
    ) -> None:
        """Charging of ``s`` ended: bill it now, or (its tariff prices PARKING_TIME and
        the vehicle may still be plugged in) from the unplug on (:meth:`unplug`).

        Whatever path brought ``energy`` (a completion, a fault, a reboot, a silent
        station), it is cut at the session's bound: the battery's room from its start,
        and for a real-time charger (``realtime_power_kw``) also power x wall time
        (x ``metered_time_scale``) + 10 %. What is cut is counted and never billed.
        """
        if s.charged_at is not None:  # parked already: a repeated completion
            self._s.counters["session_duplicates"] += 1
            return
        wall_s = None
        if realtime_power_kw is not None:
            wall_s = (now - s.started_at) * self._s.cfg.metered_time_scale
        bound = energy_bound_kwh(
            s.nivel_inicial, s.capacidade_kwh, power_kw=realtime_power_kw, wall_s=wall_s
        )
        energy, excess = bounded_energy(energy, bound)
        if excess > 0:
            self._s.counters["sessions_energy_bounded"] += 1
            self._s.counters["energy_excess_wh"] += int(excess * 1000)
            fx.append(
                Rejected(
                    "stations",
                    EnergyAboveBound(
                        f"session {s.id} at {s.point_id!r}: {kwh3(energy + excess)} kWh "
                        f"reported, {kwh3(energy)} kWh billed"
                    ),
                )
            )
            if nivel_final > s.nivel_inicial:
                cap = to_decimal(s.capacidade_kwh)
                gained = float(energy / cap * 100) if cap > 0 else 0.0
                nivel_final = round(min(nivel_final, s.nivel_inicial + gained), 3)
        if may_park and s.parks:
            s.charged_at = now
            s.energy = energy
            s.nivel_final = nivel_final
            s.reason = reason
            self._sites.end(s.id, now, fx)  # charging ended: its power is free again
            self.persist(fx, s)
            self._s.timers.schedule(now + self._s.cfg.max_parking_s, ParkingEnd(s.id, now))
            return
        self._close(s, now, fx, energy, nivel_final, reason, now)

    def unplug(self, s: Session, now: float, fx: list[Effect], capped: bool = False) -> None:
        """The vehicle of parked session ``s`` left (or parking reached its cap): bill it."""
        if s.charged_at is None or s.energy is None or s.nivel_final is None:
            return
        end = now
        if capped:
            end = s.charged_at + self._s.cfg.max_parking_s
            self._s.counters["parking_capped"] += 1
        self._close(s, end, fx, s.energy, s.nivel_final, s.reason or "", s.charged_at)

    def parking_end(self, session_id: str, since: float, now: float, fx: list[Effect]) -> None:
        """The parking cap of ``session_id`` (parked since ``since``) is reached."""
        s = self._running.get(session_id)
        if s is not None and s.charged_at == since:
            self.unplug(s, now, fx, capped=True)

    def parked_since(self, session_id: str, since: float) -> bool:
        s = self._running.get(session_id)
        return s is not None and s.charged_at == since

    def set_power(self, session_id: str, power_kw: float, now: float) -> bool:
        """The power allocated to a running session changed: its charging periods split
        there (only tariffed sessions keep the record; False when nothing changed)."""
        s = self._running.get(session_id)
        if s is None or s.tariff is None:
            return False
        return s.set_power(power_kw, now)

    def running_cost(self, s: Session, now: float) -> float:
        """What a running session costs so far (VAT included): the energy last reported
        at its price, or under its tariff up to ``now`` (parking included)."""
        if s.tariff is None:
            return float(session_cost(to_decimal(max(0.0, s.energy_reported)), s.price_kwh))
        if s.charged_at is not None and s.energy is not None:
            energy, charge_end = s.energy, s.charged_at
        else:
            energy, charge_end = to_decimal(max(0.0, s.energy_reported)), now
        usages = s.usages(energy, charge_end, now)
        return float(price_compiled(self._s.tariffs.compiled(s.tariff), usages, s.started_at).cost)

    def _close(
        self,
        s: Session,
        now: float,
        fx: list[Effect],
        energy: Decimal,
        nivel_final: float,
        reason: str,
        charge_end: float,
    ) -> None:
        """Close ``s``, record it in the account and tell everybody (exactly once)."""
        s.state = "billed"
        s.ended_at = now
        s.energy = energy
        cdr: dict[str, Any] | UnsetType = UNSET
        if s.tariff is None:
            s.cost = session_cost(energy, s.price_kwh)
        else:
            book = self._s.tariffs
            usages = s.usages(energy, charge_end, now)
            bill = price_compiled(book.compiled(s.tariff), usages, s.started_at)
            s.cost = bill.cost
            s.cdr = cdr = bill.cdr_builtins(
                cdr_id=s.id,
                tariff=s.tariff,
                start=s.started_at,
                end=now,
                now=now,
                session_id=s.id,
                token=s.vehicle_id,
                remark=reason,
            )
        s.nivel_final = nivel_final
        s.reason = reason
        self._running.pop(s.id, None)
        if self._by_vehicle.get(s.vehicle_id) is s:
            del self._by_vehicle[s.vehicle_id]
        p = self._points.get(s.point_id)
        if p is not None and p.session is s:
            p.session = None
        self._sites.end(s.id, now, fx)
        e = kwh3(energy)
        cost = float(s.cost)
        self._s.log.publish(
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
                cdr=cdr,
            ),
            now,
        )
        s.billed_seq = self._s.log.seq
        self._accounts.record(s)
        self.persist(fx, s)
        self._push_bill(s, now, fx, e, cost, cdr)
        if p is not None:
            self._refresh(p, now, fx)

    def _push_bill(
        self,
        s: Session,
        now: float,
        fx: list[Effect],
        e: float,
        cost: float,
        cdr: dict[str, Any] | UnsetType,
    ) -> None:
        """``custo_final`` then ``encerramento`` to the vehicle of a billed session."""
        assert s.nivel_final is not None
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
                    nivel_final=s.nivel_final,
                    duracao_s=round(now - s.started_at, 3),
                    cdr=cdr,
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
                    energia_consumida=round(s.nivel_final - s.nivel_inicial, 3),
                    energia_kwh=e,
                ),
            )
        )

    def bill_fault(self, s: Session, now: float, fx: list[Effect]) -> None:
        """Close a session the station can no longer report: the energy last reported
        (a parked session: what it charged, parking until now)."""
        if s.charged_at is not None:
            self.unplug(s, now, fx)
            return
        reported = s.energy_reported if math.isfinite(s.energy_reported) else 0.0
        energy = to_decimal(reported)
        cap = to_decimal(s.capacidade_kwh)
        gained = float(energy / cap * 100) if cap > 0 else 0.0
        nivel_final = min(100.0, s.nivel_inicial + gained)
        self.bill(s, now, fx, energy, round(nivel_final, 3), "fault", may_park=False)

    # --- restoring from the store ---------------------------------------------------

    def restore_session(self, s: Session) -> None:
        """A billed session goes to its account; a running one back to its point."""
        if s.ended_at is not None:
            self._accounts.record(s)
            return
        p = self._points.get(s.point_id)
        if p is None:
            return
        self._running[s.id] = s
        self._by_vehicle[s.vehicle_id] = s
        p.session = s
        if s.charged_at is not None:  # parked: no power to share, a cap to keep
            due = s.charged_at + self._s.cfg.max_parking_s
            self._s.timers.schedule(due, ParkingEnd(s.id, s.charged_at))
            return
        self._sites.adopt(s.id, s.vehicle_id, p.id, s.started_at, p.potencia_kw)

    def restore_start(self, pend: PendingStart) -> None:
        """A start sent before a crash whose ack never came back (see Core.restore)."""
        p = self._points.get(pend.point_id)
        if p is None or p.pending is not None or p.session is not None:
            return
        if pend.session_id in self._running or pend.session_id in self._accounts.billed:
            return
        self._track(p, pend)
        self._sites.adopt(pend.session_id, pend.vehicle_id, p.id, pend.deadline, p.potencia_kw)
