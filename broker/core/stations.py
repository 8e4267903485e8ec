"""Station traffic: status datagrams (the hot path) and ZeroMQ messages.

An unchanged datagram from an online point costs a dict lookup, a few
comparisons and two attribute stores: no allocation besides the empty effect
list, no timer push (the offline timer re-arms itself lazily, see
:meth:`broker.core.engine.Engine._fire_offline`).
"""

from __future__ import annotations

import math

from broker.core.effects import Effect, Persist, SendStation
from broker.core.engine import Engine, offline_slot
from broker.core.points import DEFAULT_INTERVAL_S, PointState, holds_turn
from broker.core.sessions import energy_kwh, to_decimal
from common.messages import (
    Ack,
    Heartbeat,
    Hello,
    SessionComplete,
    StationToBroker,
    StatusDatagram,
)


def handle_datagram(eng: Engine, d: StatusDatagram, now: float) -> list[Effect]:
    eng.counters["datagrams"] += 1
    p = eng.points.get(d.id)
    if p is None:
        if _full(eng):
            return []
        return _register_by_datagram(eng, d, now)
    boot = d.boot_id
    if boot is not None and d.seq is not None:
        if boot == p.boot_id:
            if d.seq <= p.dgram_seq:
                eng.counters["datagrams_stale"] += 1
                return []
        elif p.session is not None:
            return _slow_datagram(eng, p, d, now)
        else:
            p.boot_id = boot
        p.dgram_seq = d.seq
    p.last_heard = now
    energy = d.energia_kwh
    if energy is not None:
        p.rep_energy = energy
        s = p.session
        if s is not None and (d.session_id is None or d.session_id == s.id):
            s.energy_reported = energy
    if (
        p.online
        and d.available is p.rep_available
        and d.estado == p.rep_estado
        and d.vehicle_id == p.rep_vehicle
        and d.latitude == p.latitude
        and d.longitude == p.longitude
        and (d.potencia_kw is None or d.potencia_kw == p.potencia_kw)
        and (d.preco_kwh is None or d.preco_kwh == p.preco_kwh)
        and (d.interval_s is None or d.interval_s == p.interval_s)
    ):
        if p.offline_timer_at is None:
            p.offline_timer_at = offline_slot(now + p.window_s)
            eng.timers.schedule(p.offline_timer_at, "offline", p.id)
        return []
    return _slow_datagram(eng, p, d, now)


def _slow_datagram(eng: Engine, p: PointState, d: StatusDatagram, now: float) -> list[Effect]:
    fx: list[Effect] = []
    if d.boot_id is not None:
        _note_boot(eng, p, d.boot_id, now, fx)
        if d.seq is not None:
            p.dgram_seq = d.seq
    changed = _update_static(
        eng, p, d.latitude, d.longitude, d.potencia_kw, d.preco_kwh, d.interval_s
    )
    p.rep_available = d.available
    p.rep_estado = d.estado
    p.rep_vehicle = d.vehicle_id
    if changed:
        fx.append(Persist("point", p.id, p.static_record()))
    eng.heard(p, now, fx)
    eng.refresh(p, now, fx)
    return fx


def _register_by_datagram(eng: Engine, d: StatusDatagram, now: float) -> list[Effect]:
    fx: list[Effect] = []
    p = _register(
        eng,
        d.id,
        d.latitude,
        d.longitude,
        d.potencia_kw,
        d.preco_kwh,
        d.interval_s,
        now,
        fx,
    )
    p.boot_id = d.boot_id
    if d.seq is not None:
        p.dgram_seq = d.seq
    p.rep_available = d.available
    p.rep_estado = d.estado
    p.rep_vehicle = d.vehicle_id
    p.rep_energy = d.energia_kwh
    eng.heard(p, now, fx)
    eng.refresh(p, now, fx)
    return fx


def _full(eng: Engine) -> bool:
    """True (and counted) when no new point may be registered: the point cap is reached."""
    if len(eng.points) < eng.cfg.max_points:
        return False
    eng.counters["points_refused"] += 1
    return True


def _register(
    eng: Engine,
    point_id: str,
    latitude: float,
    longitude: float,
    potencia_kw: float | None,
    preco_kwh: float | None,
    interval_s: float | None,
    now: float,
    fx: list[Effect],
) -> PointState:
    p = PointState(id=point_id, latitude=latitude, longitude=longitude)
    potencia_kw, preco_kwh, interval_s = _sane(potencia_kw), _sane(preco_kwh), _sane(interval_s)
    if interval_s == 0:
        interval_s = None
    if potencia_kw is not None:
        p.potencia_kw = potencia_kw
    if preco_kwh is not None:
        p.preco_kwh = preco_kwh
    p.interval_s = interval_s if interval_s is not None else DEFAULT_INTERVAL_S
    p.window_s = eng.window(p.interval_s)
    eng.points[point_id] = p
    eng.index.put(point_id, latitude, longitude)
    fx.append(Persist("point", p.id, p.static_record()))
    eng.publish(
        fx,
        "point.registered",
        {
            "point_id": point_id,
            "latitude": latitude,
            "longitude": longitude,
            "potencia_kw": p.potencia_kw,
            "preco_kwh": p.preco_kwh,
        },
        now,
    )
    return p


def _sane(value: float | None) -> float | None:
    """A reported power or price, or None when it is not a finite non-negative number."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return value


def _update_static(
    eng: Engine,
    p: PointState,
    latitude: float,
    longitude: float,
    potencia_kw: float | None,
    preco_kwh: float | None,
    interval_s: float | None,
) -> bool:
    """Static facts follow the latest report; True when something changed."""
    potencia_kw, preco_kwh, interval_s = _sane(potencia_kw), _sane(preco_kwh), _sane(interval_s)
    if interval_s == 0:
        interval_s = None
    changed = False
    if latitude != p.latitude or longitude != p.longitude:
        p.latitude, p.longitude = latitude, longitude
        eng.index.put(p.id, latitude, longitude)
        changed = True
    if potencia_kw is not None and potencia_kw != p.potencia_kw:
        p.potencia_kw = potencia_kw
        changed = True
    if preco_kwh is not None and preco_kwh != p.preco_kwh:
        p.preco_kwh = preco_kwh
        changed = True
    if interval_s is not None and interval_s != p.interval_s:
        p.interval_s = interval_s
        p.window_s = eng.window(interval_s)
        changed = True
    return changed


def _note_boot(eng: Engine, p: PointState, boot_id: str, now: float, fx: list[Effect]) -> None:
    """A new ``boot_id``: reset the stale filter; a session the old process ran is lost."""
    if not boot_id or boot_id == p.boot_id:
        return
    p.boot_id = boot_id
    p.dgram_seq = -1
    s = p.session
    if s is not None and s.boot_id is not None and s.boot_id != boot_id:
        eng.bill_fault(s, now, fx)


# --- ZeroMQ messages ------------------------------------------------------------------


def handle_station(eng: Engine, point_id: str, msg: StationToBroker, now: float) -> list[Effect]:
    fx: list[Effect] = []
    p = eng.points.get(point_id)
    if isinstance(msg, Hello):
        if p is None:
            if _full(eng):
                return fx
            p = _register(
                eng,
                point_id,
                msg.latitude,
                msg.longitude,
                msg.potencia_kw,
                msg.preco_kwh,
                msg.interval_s,
                now,
                fx,
            )
            p.boot_id = msg.boot_id or None
        else:
            if msg.boot_id:
                _note_boot(eng, p, msg.boot_id, now, fx)
            if _update_static(
                eng, p, msg.latitude, msg.longitude, msg.potencia_kw, msg.preco_kwh, msg.interval_s
            ):
                fx.append(Persist("point", p.id, p.static_record()))
        fx.append(SendStation(point_id, {"type": "welcome", "heartbeat_s": eng.cfg.heartbeat_s}))
        eng.heard(p, now, fx)
        eng.refresh(p, now, fx)
        if holds_turn(p) and p.queue[0].deadline is not None:
            head = p.queue[0]
            eng.command(
                fx,
                p.id,
                "hold",
                reservation_id=head.id,
                vehicle_id=head.vehicle_id,
                until=head.deadline,
            )
        return fx
    if p is not None:
        eng.heard(p, now, fx)
        eng.refresh(p, now, fx)
    if isinstance(msg, Heartbeat):
        fx.append(SendStation(point_id, {"type": "heartbeat"}))
    elif isinstance(msg, Ack):
        _ack(eng, point_id, msg, now, fx)
    elif isinstance(msg, SessionComplete):
        _session_complete(eng, point_id, msg, now, fx)
    return fx


def _ack(eng: Engine, point_id: str, msg: Ack, now: float, fx: list[Effect]) -> None:
    pend = eng.pending.get(msg.cmd_id)
    if pend is None or pend.point_id != point_id:
        late = eng.abandoned.pop(msg.cmd_id, None)
        if late is not None and msg.ok:
            # the station started after we gave up on it: make it stop again
            eng.command(fx, late[0], "stop", session_id=late[1])
        elif late is None:
            eng.counters["acks_unknown"] += 1
        return
    del eng.pending[msg.cmd_id]
    if msg.ok:
        eng.start_session(pend, now, fx)
    else:
        eng.fail_start(pend, now, fx, msg.error or "refused")


def _session_complete(
    eng: Engine, point_id: str, msg: SessionComplete, now: float, fx: list[Effect]
) -> None:
    sid = msg.session_id
    if sid in eng.accounts.billed:
        eng.counters["session_duplicates"] += 1
    else:
        s = eng.sessions.get(sid)
        if s is None:
            p = eng.points.get(point_id)
            pend = p.pending if p is not None else None
            if pend is not None and pend.session_id == sid:
                # the ack was lost but the station charged: the session did start
                del eng.pending[pend.cmd_id]
                eng.start_session(pend, now, fx)
                s = eng.sessions.get(sid)
        if s is None:
            eng.counters["sessions_unknown"] += 1
        elif msg.energia_medida_kwh is not None:
            measured = msg.energia_medida_kwh
            if not (math.isfinite(measured) and 0.0 <= measured <= s.capacidade_kwh):
                # out of the bounds a station may report: dropped, counted, not acked
                eng.counters["sessions_out_of_bounds"] += 1
                return
            # the level the metered energy implies (the charger does not know the battery)
            gained = measured / s.capacidade_kwh * 100.0 if s.capacidade_kwh > 0 else 0.0
            nivel_final = round(min(100.0, s.nivel_inicial + gained), 3)
            eng.bill(s, now, fx, to_decimal(measured), nivel_final, msg.reason)
        else:
            energy = energy_kwh(msg.nivel_inicial, msg.nivel_final, s.capacidade_kwh)
            if (
                msg.reason == "fault"
                and energy == 0
                and math.isfinite(msg.energia_kwh)
                and msg.energia_kwh > 0
            ):
                energy = to_decimal(msg.energia_kwh)
            eng.bill(s, now, fx, energy, msg.nivel_final, msg.reason)
    fx.append(SendStation(point_id, {"type": "session_ack", "session_id": sid}))


def station_unreachable(eng: Engine, point_id: str, now: float) -> list[Effect]:
    """The ROUTER could not route to the station: a pending start fails at once."""
    fx: list[Effect] = []
    p = eng.points.get(point_id)
    if p is not None and p.pending is not None:
        pend = p.pending
        eng.pending.pop(pend.cmd_id, None)
        eng.fail_start(pend, now, fx, "station unreachable")
    return fx
