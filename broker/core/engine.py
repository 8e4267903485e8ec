"""The core's state and the rules shared by every entry point.

:class:`Engine` owns the tables (points, queues, sessions, accounts, pending
station commands), the event sequence and the timer heap. Its methods apply
one rule each and append the resulting effects to the ``fx`` list they are
given, in the order the edges must carry them out. Vehicle requests and
station traffic are dispatched by :mod:`broker.core.vehicle_requests` and
:mod:`broker.core.stations`; timers fire through :meth:`Engine.tick`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

from broker.core.accounts import Accounts
from broker.core.config import CoreConfig
from broker.core.effects import Effect, Persist, Publish, Push, Reply, SendStation
from broker.core.geoindex import GeoIndex
from broker.core.point_views import PointViews, view_dict
from broker.core.points import PointState, derive_estado, is_faulted
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
from common.messages import BusEvent
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


class Engine:
    """All state of the broker core; see :mod:`broker.core` for the theory of operation."""

    def __init__(self, config: CoreConfig, new_id: Callable[[str], str]) -> None:
        self.cfg = config
        self.new_id = new_id
        self.points: dict[str, PointState] = {}
        self.index = GeoIndex()
        self.views = PointViews(config.queue_capacity)
        self.low_battery: set[str] = set()  # vehicles told about; see battery_report
        self.res_by_vehicle: dict[str, Reservation] = {}
        self.res_by_id: dict[str, Reservation] = {}
        self.sessions: dict[str, Session] = {}
        self.session_by_vehicle: dict[str, Session] = {}
        self.pending: dict[str, PendingStart] = {}
        self.abandoned: dict[str, tuple[str, str]] = {}
        self.accounts = Accounts()
        self.timers = TimerHeap()
        self.seq = 0
        self.order = 0
        self.points_online = 0
        self.counters: dict[str, int] = {
            "datagrams": 0,
            "datagrams_stale": 0,
            "session_duplicates": 0,
            "sessions_unknown": 0,
            "acks_unknown": 0,
            "points_refused": 0,
            "sessions_out_of_bounds": 0,
        }

    # --- building effects -------------------------------------------------------------

    def publish(self, fx: list[Effect], topic: str, data: dict[str, Any], now: float) -> None:
        self.seq += 1
        fx.append(Publish(BusEvent(self.seq, now, topic, data)))

    def command(self, fx: list[Effect], point_id: str, kind: str, **fields: Any) -> str:
        cmd_id = self.new_id("cmd")
        fx.append(SendStation(point_id, {"type": kind, "cmd_id": cmd_id, **fields}))
        return cmd_id

    def persist_reservation(self, fx: list[Effect], r: Reservation) -> None:
        fx.append(Persist("reservation", r.id, r.record()))

    def persist_session(self, fx: list[Effect], s: Session) -> None:
        fx.append(Persist("session", s.id, s.record()))

    # --- points ---------------------------------------------------------------------

    def window(self, interval_s: float) -> float:
        return max(self.cfg.offline_after_s, 3.0 * interval_s)

    def heard(self, p: PointState, now: float, fx: list[Effect]) -> None:
        """A sign of life: refresh ``last_heard``; an offline point comes back online."""
        p.last_heard = now
        if p.offline_timer_at is None:
            p.offline_timer_at = offline_slot(now + p.window_s)
            self.timers.schedule(p.offline_timer_at, "offline", p.id)
        if not p.online:
            p.online = True
            self.points_online += 1
            self.publish(fx, "point.online", {"point_id": p.id}, now)

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
                    self.timers.schedule(now + self.cfg.offline_grace_s, "grace", p.id, now)
        if usable:
            self.advance(p, now, fx)
        estado = derive_estado(p)
        if estado != p.estado:
            p.estado = estado
            self.publish(
                fx,
                "point.status",
                {
                    "point_id": p.id,
                    "estado": estado,
                    "available": estado == "disponivel" and not p.queue,
                    "queue_size": len(p.queue),
                },
                now,
            )

    def point_view(self, p: PointState, distance: float | None, now: float) -> dict[str, Any]:
        """The protocol's Point object (``distance`` omitted when None)."""
        return view_dict(p, self.cfg.queue_capacity, distance, self.wait_minutes(p, now))

    def encoded_points(self, hits: list[tuple[float, str]], now: float) -> bytes:
        """``[Point, ...]`` as JSON for ``(distance_km, point_id)`` hits, from cached views."""
        listed = []
        for d, pid in hits:
            p = self.points[pid]
            listed.append((d, p, self.wait_minutes(p, now)))
        return self.views.encode_list(listed)

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

        Not again for that vehicle until it reports ``low_battery_rearm`` or more, so a
        vehicle that polls while low makes one event (and a read stays a read).
        """
        if level < self.cfg.low_battery:
            if vehicle_id not in self.low_battery:
                self.low_battery.add(vehicle_id)
                self.publish(
                    fx,
                    "vehicle.low_battery",
                    {
                        "vehicle_id": vehicle_id,
                        "nivel_bateria": level,
                        "latitude": latitude,
                        "longitude": longitude,
                    },
                    now,
                )
        elif level >= self.cfg.low_battery_rearm:
            self.low_battery.discard(vehicle_id)

    # --- queues and turns -----------------------------------------------------------

    def advance(self, p: PointState, now: float, fx: list[Effect]) -> None:
        """Give the turn to the head of the queue when the point is free and usable."""
        if not p.usable or p.session is not None or p.pending is not None or not p.queue:
            return
        head = p.queue[0]
        if head.turn_started_at is not None:
            return
        head.turn_started_at = now
        head.deadline = turn_deadline(head, now, self.cfg.hold_s)
        self.persist_reservation(fx, head)
        expira = format_timestamp(head.deadline)
        fx.append(
            Push(
                head.vehicle_id,
                "sua_vez",
                {"id_ponto_recarga": p.id, "reservation_id": head.id, "expira_em": expira},
            )
        )
        self.publish(
            fx,
            "reservation.turn",
            {
                "reservation_id": head.id,
                "vehicle_id": head.vehicle_id,
                "point_id": p.id,
                "expira_em": expira,
                "deadline": head.deadline,
            },
            now,
        )
        self.command(
            fx,
            p.id,
            "hold",
            reservation_id=head.id,
            vehicle_id=head.vehicle_id,
            until=head.deadline,
        )
        self.timers.schedule(head.deadline, "expire", head.id, head.deadline)

    def add_reservation(self, p: PointState, r: Reservation, fx: list[Effect]) -> None:
        p.queue.append(r)
        self.res_by_vehicle[r.vehicle_id] = r
        self.res_by_id[r.id] = r
        self.persist_reservation(fx, r)

    def drop_reservation(self, r: Reservation, fx: list[Effect]) -> None:
        """Take ``r`` out of every table (the caller publishes and refreshes)."""
        p = self.points[r.point_id]
        p.queue.remove(r)
        if self.res_by_vehicle.get(r.vehicle_id) is r:
            del self.res_by_vehicle[r.vehicle_id]
        self.res_by_id.pop(r.id, None)
        fx.append(Persist("reservation", r.id, None))
        if r.turn_started_at is not None:
            self.command(fx, p.id, "release", reservation_id=r.id)

    def cancel(self, r: Reservation, now: float, fx: list[Effect], motivo: str, push: bool) -> None:
        self.drop_reservation(r, fx)
        self.publish(
            fx,
            "reservation.cancelled",
            {
                "reservation_id": r.id,
                "vehicle_id": r.vehicle_id,
                "point_id": r.point_id,
                "motivo": motivo,
            },
            now,
        )
        if push:
            fx.append(
                Push(
                    r.vehicle_id,
                    "reserva_cancelada",
                    {"id_ponto_recarga": r.point_id, "reservation_id": r.id, "motivo": motivo},
                )
            )

    def expire(self, r: Reservation, now: float, fx: list[Effect]) -> None:
        self.drop_reservation(r, fx)
        fx.append(
            Push(
                r.vehicle_id,
                "reserva_expirada",
                {"id_ponto_recarga": r.point_id, "reservation_id": r.id},
            )
        )
        self.publish(
            fx,
            "reservation.expired",
            {"reservation_id": r.id, "vehicle_id": r.vehicle_id, "point_id": r.point_id},
            now,
        )
        self.refresh(self.points[r.point_id], now, fx)

    # --- sessions -------------------------------------------------------------------

    def start_session(self, pend: PendingStart, now: float, fx: list[Effect]) -> None:
        """The station acked ``start``: the reservation becomes a running session."""
        p = self.points[pend.point_id]
        p.pending = None
        fx.append(Persist("meta", pending_key(pend.session_id), None))
        if pend.reservation_id is not None:
            r = self.res_by_id.get(pend.reservation_id)
            if r is not None:
                p.queue.remove(r)
                self.res_by_id.pop(r.id, None)
                if self.res_by_vehicle.get(r.vehicle_id) is r:
                    del self.res_by_vehicle[r.vehicle_id]
                fx.append(Persist("reservation", r.id, None))
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
        self.sessions[s.id] = s
        self.session_by_vehicle[s.vehicle_id] = s
        p.session = s
        self.persist_session(fx, s)
        self.publish(
            fx,
            "charging.started",
            {
                "session_id": s.id,
                "vehicle_id": s.vehicle_id,
                "point_id": p.id,
                "reservation_id": s.reservation_id,
                "started_at": format_timestamp(now),
                "price_kwh": float(s.price_kwh),
                "payment_method": s.payment_method,
                "nivel_bateria": s.nivel_inicial,
                "nivel_carregar": s.nivel_carregar,
                "capacidade_kwh": s.capacidade_kwh,
            },
            now,
        )
        if pend.conn != NO_CONNECTION:  # a start restored after a crash has no requester
            fx.append(
                Reply(
                    pend.conn,
                    pend.request_id,
                    "chegada_response",
                    {
                        "status": "success",
                        "code": "started",
                        "message": "Charging started",
                        "vehicle_id": s.vehicle_id,
                        "id_ponto_recarga": p.id,
                        "session_id": s.id,
                    },
                )
            )
        self.refresh(p, now, fx)

    def fail_start(self, pend: PendingStart, now: float, fx: list[Effect], why: str) -> None:
        """``start`` was refused, not acked in time, or unroutable: ``point_unreachable``."""
        p = self.points[pend.point_id]
        if p.pending is pend:
            p.pending = None
        self.pending.pop(pend.cmd_id, None)
        fx.append(Persist("meta", pending_key(pend.session_id), None))
        if len(self.abandoned) >= MAX_ABANDONED:
            self.abandoned.clear()
        self.abandoned[pend.cmd_id] = (pend.point_id, pend.session_id)
        if pend.conn != NO_CONNECTION:  # a start restored after a crash has no requester
            fx.append(
                Reply(
                    pend.conn,
                    pend.request_id,
                    "chegada_response",
                    {
                        "status": "error",
                        "code": "point_unreachable",
                        "message": f"Station did not confirm the start ({why}); reservation kept",
                        "vehicle_id": pend.vehicle_id,
                        "id_ponto_recarga": pend.point_id,
                    },
                )
            )
        self.refresh(p, now, fx)

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
        self.sessions.pop(s.id, None)
        if self.session_by_vehicle.get(s.vehicle_id) is s:
            del self.session_by_vehicle[s.vehicle_id]
        p = self.points.get(s.point_id)
        if p is not None and p.session is s:
            p.session = None
        e = kwh3(energy)
        cost = float(s.cost)
        self.publish(
            fx,
            "charging.completed",
            {
                "session_id": s.id,
                "vehicle_id": s.vehicle_id,
                "point_id": s.point_id,
                "started_at": format_timestamp(s.started_at),
                "ended_at": format_timestamp(now),
                "energy_kwh": e,
                "price_kwh": float(s.price_kwh),
                "cost": cost,
                "currency": CURRENCY,
                "payment_method": s.payment_method,
                "reason": reason,
            },
            now,
        )
        s.billed_seq = self.seq
        self.accounts.record(s)
        self.persist_session(fx, s)
        fx.append(
            Push(
                s.vehicle_id,
                "custo_final",
                {
                    "vehicle_id": s.vehicle_id,
                    "id_ponto_recarga": s.point_id,
                    "session_id": s.id,
                    "cost": cost,
                    "moeda": CURRENCY,
                    "payment_method": s.payment_method,
                    "energia_kwh": e,
                    "nivel_inicial": s.nivel_inicial,
                    "nivel_final": nivel_final,
                    "duracao_s": round(now - s.started_at, 3),
                },
            )
        )
        fx.append(
            Push(
                s.vehicle_id,
                "encerramento",
                {
                    "id_veiculo": s.vehicle_id,
                    "id_ponto_recarga": s.point_id,
                    "session_id": s.id,
                    "energia_consumida": round(nivel_final - s.nivel_inicial, 3),
                    "energia_kwh": e,
                },
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

    # --- timers ---------------------------------------------------------------------

    def next_due(self) -> float | None:
        while True:
            top = self.timers.peek()
            if top is None:
                return None
            if self._live(top[2], top[3], top[4]):
                return top[0]
            self.timers.discard_top()

    def _live(self, kind: str, key: str, token: float) -> bool:
        if kind == "offline":
            p = self.points.get(key)
            return p is not None and p.online
        if kind == "expire":
            r = self.res_by_id.get(key)
            return r is not None and r.deadline == token
        if kind == "grace":
            p = self.points.get(key)
            return p is not None and p.unusable_since == token and not p.usable
        return key in self.pending

    def tick(self, now: float) -> list[Effect]:
        fx: list[Effect] = []
        while (entry := self.timers.pop_due(now)) is not None:
            _due, _order, kind, key, token = entry
            if kind == "offline":
                self._fire_offline(key, now, fx)
            elif kind == "expire":
                self._fire_expire(key, token, now, fx)
            elif kind == "grace":
                self._fire_grace(key, token, now, fx)
            else:
                pend = self.pending.get(key)
                if pend is not None:
                    self.fail_start(pend, now, fx, "timeout")
        return fx

    def _fire_offline(self, point_id: str, now: float, fx: list[Effect]) -> None:
        p = self.points.get(point_id)
        if p is None:
            return
        p.offline_timer_at = None
        if not p.online:
            return
        due = p.last_heard + p.window_s
        if due > now:
            p.offline_timer_at = due = offline_slot(due)
            self.timers.schedule(due, "offline", p.id)
            return
        p.online = False
        self.points_online -= 1
        if p.session is not None:
            # keep the energy last reported: a restart may have to bill it as a fault
            self.persist_session(fx, p.session)
        self.publish(
            fx,
            "point.offline",
            {"point_id": p.id, "last_heard": format_timestamp(p.last_heard)},
            now,
        )
        self.refresh(p, now, fx)

    def _fire_expire(self, res_id: str, token: float, now: float, fx: list[Effect]) -> None:
        r = self.res_by_id.get(res_id)
        if r is None or r.deadline != token:
            return
        p = self.points[r.point_id]
        if p.pending is not None and p.pending.reservation_id == r.id:
            # the vehicle arrived and the station is being asked to start: wait for it
            self.timers.schedule(max(p.pending.deadline, now), "expire", r.id, token)
            return
        self.expire(r, now, fx)

    def _fire_grace(self, point_id: str, token: float, now: float, fx: list[Effect]) -> None:
        p = self.points.get(point_id)
        if p is None or p.usable or p.unusable_since != token:
            return
        motivo = "point_offline" if not p.online else "point_unavailable"
        for r in list(p.queue):
            self.cancel(r, now, fx, motivo, push=True)
        if p.session is not None and not p.online:
            self.bill_fault(p.session, now, fx)
        self.refresh(p, now, fx)
