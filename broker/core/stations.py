"""Station traffic: status datagrams (the hot path) and ZeroMQ messages.

An unchanged datagram from an online point costs a dict lookup, a few
comparisons and two attribute stores (three when signed): no allocation
besides the empty effect list, no timer push (the offline timer re-arms itself
lazily, see :meth:`broker.core.point_table.PointTable.offline_check`).
"""

from __future__ import annotations

import math

from broker.core.effects import Effect, Rejected
from broker.core.engine import Engine
from broker.core.point_table import OUT_OF_ORDER, SAME, UNPLUGGED
from broker.core.points import PointState
from broker.core.sessions import LEVEL_TOLERANCE, energy_kwh
from common.errors import (
    FiguresOutOfBounds,
    NotSessionOwner,
    ReplayedDatagram,
    StaleDatagram,
)
from common.messages import (
    Ack,
    Heartbeat,
    Hello,
    SessionAck,
    SessionComplete,
    StationToBroker,
    StatusDatagram,
    Welcome,
)
from common.money import to_decimal


def handle_datagram(
    eng: Engine, d: StatusDatagram, now: float, signed_ts: float | None = None
) -> list[Effect]:
    """Apply one status datagram, or refuse it as out of order: the one ordering rule.

    Within the point's current ``boot_id`` a ``seq`` not above the last one seen is
    refused as ``stale``; a new ``boot_id`` starts over. ``signed_ts`` is the ``ts`` of a
    datagram whose signature the status edge has checked: such a datagram is refused
    as ``replayed`` instead, and a new boot of it is taken only when ``signed_ts`` is
    later than the last accepted signed datagram's. A refusal is the single effect
    ``Rejected("status", StaleDatagram | ReplayedDatagram)`` and changes nothing.
    """
    p = eng.point(d.id)
    if p is None:
        if not eng.may_register():
            return []
        return _register_by_datagram(eng, d, now, signed_ts)
    heard = eng.points.take_datagram(p, d, now, signed_ts)
    if heard == SAME:
        if d.potencia_atual_kw is not None and p.session is not None:
            return _drawn(eng, p, d, d.potencia_atual_kw, now, [])
        return []
    if heard == OUT_OF_ORDER:
        return _out_of_order(eng, d, signed_ts)
    fx: list[Effect] = []
    if heard == UNPLUGGED and p.session is not None:
        # the vehicle left a parked session: its bill, parking included, goes out now
        eng.sessions.unplug(p.session, now, fx)
    fx.extend(_slow_datagram(eng, p, d, now))
    if d.potencia_atual_kw is not None and p.session is not None:
        return _drawn(eng, p, d, d.potencia_atual_kw, now, fx)
    return fx


def _drawn(
    eng: Engine, p: PointState, d: StatusDatagram, drawn: float, now: float, fx: list[Effect]
) -> list[Effect]:
    """The power a session on a site reports drawing goes to its site."""
    s = p.session
    if s is not None and eng.sites.tracks(s.id) and (d.session_id in (None, s.id)):
        eng.sites.drawn(s.id, drawn, now, fx)
    return fx


def _slow_datagram(eng: Engine, p: PointState, d: StatusDatagram, now: float) -> list[Effect]:
    fx: list[Effect] = []
    if d.boot_id is not None:
        _note_boot(eng, p, d.boot_id, now, fx)
        if d.seq is not None:
            eng.points.set_seq(p, d.seq)
    eng.points.update_static(
        p, d.latitude, d.longitude, d.potencia_kw, d.preco_kwh, d.interval_s, fx
    )
    eng.points.set_reported(p, d)
    eng.heard(p, now, fx)
    eng.refresh(p, now, fx)
    return fx


def _out_of_order(eng: Engine, d: StatusDatagram, signed_ts: float | None) -> list[Effect]:
    """The refusal of a datagram that is not newer than what the point already sent."""
    kind = StaleDatagram if signed_ts is None else ReplayedDatagram
    eng.count(f"datagrams_{kind.code}")
    return [Rejected("status", kind(f"{d.id!r} boot {d.boot_id!r} seq {d.seq}"))]


def _register_by_datagram(
    eng: Engine, d: StatusDatagram, now: float, signed_ts: float | None
) -> list[Effect]:
    fx: list[Effect] = []
    p = eng.points.register(
        d.id, d.latitude, d.longitude, d.potencia_kw, d.preco_kwh, d.interval_s, now, fx
    )
    eng.points.first_report(p, d, signed_ts)
    eng.heard(p, now, fx)
    eng.refresh(p, now, fx)
    return fx


def _note_boot(eng: Engine, p: PointState, boot_id: str, now: float, fx: list[Effect]) -> None:
    """A new ``boot_id``: reset the stale filter; a session the old process ran is lost."""
    if not eng.points.new_boot(p, boot_id):
        return
    s = p.session
    if s is not None and s.boot_id is not None and s.boot_id != boot_id:
        eng.bill_fault(s, now, fx)


# --- ZeroMQ messages ------------------------------------------------------------------


def handle_station(eng: Engine, point_id: str, msg: StationToBroker, now: float) -> list[Effect]:
    fx: list[Effect] = []
    p = eng.point(point_id)
    if isinstance(msg, Hello):
        if p is None:
            if not eng.may_register():
                return fx
            p = eng.points.register(
                point_id,
                msg.latitude,
                msg.longitude,
                msg.potencia_kw,
                msg.preco_kwh,
                msg.interval_s,
                now,
                fx,
            )
            eng.points.set_boot(p, msg.boot_id or None, None)
            eng.points.set_limites(p, msg.limites, fx)
        else:
            if msg.boot_id:
                _note_boot(eng, p, msg.boot_id, now, fx)
            eng.points.update_static(
                p, msg.latitude, msg.longitude, msg.potencia_kw, msg.preco_kwh, msg.interval_s, fx
            )
            eng.points.set_limites(p, msg.limites, fx)
        eng.points.greeted(p, msg.confirms_holds, msg.availability)
        eng.send(fx, point_id, Welcome(heartbeat_s=eng.config.heartbeat_s))
        eng.heard(p, now, fx)
        eng.refresh(p, now, fx)
        eng.resend_hold(p, now, fx)
        if p.out_of_service:
            eng.notify_availability(p, fx)
        return fx
    if p is not None:
        eng.heard(p, now, fx)
        eng.refresh(p, now, fx)
    if isinstance(msg, Heartbeat):
        eng.send(fx, point_id, Heartbeat())
    elif isinstance(msg, Ack):
        eng.station_ack(point_id, msg.cmd_id, msg.ok, msg.error, now, fx)
    elif isinstance(msg, SessionComplete):
        _session_complete(eng, point_id, msg, now, fx)
    return fx


def _session_complete(
    eng: Engine, point_id: str, msg: SessionComplete, now: float, fx: list[Effect]
) -> None:
    running = eng.running_session(msg.session_id)
    if running is not None and running.point_id != point_id:
        # only the point that runs the session may complete it
        fx.append(Rejected("stations", NotSessionOwner(f"{point_id!r} completed {msg.session_id}")))
        return
    s = eng.session_complete(point_id, msg.session_id, now, fx)
    if s is not None and (refusal := completion_refusal(msg, s.nivel_inicial, s.capacidade_kwh)):
        # out of the bounds a station may report: dropped, counted, not acked
        eng.count("sessions_out_of_bounds")
        error = FiguresOutOfBounds(f"{point_id!r} {msg.session_id}: {refusal}")
        fx.append(Rejected("stations", error))
        return
    if s is not None and msg.energia_medida_kwh is not None:
        measured = msg.energia_medida_kwh
        # the level the metered energy implies (the charger does not know the battery)
        gained = measured / s.capacidade_kwh * 100.0 if s.capacidade_kwh > 0 else 0.0
        nivel_final = round(min(100.0, s.nivel_inicial + gained), 3)
        # a metered charger is a real-time one: its energy fits its power x wall time too
        p = eng.point(point_id)
        power = p.potencia_kw if p is not None else None
        eng.bill(s, now, fx, to_decimal(measured), nivel_final, msg.reason, realtime_power_kw=power)
    elif s is not None:
        energy = energy_kwh(msg.nivel_inicial, msg.nivel_final, s.capacidade_kwh)
        if (
            msg.reason == "fault"
            and energy == 0
            and math.isfinite(msg.energia_kwh)
            and msg.energia_kwh > 0
        ):
            energy = to_decimal(msg.energia_kwh)
        eng.bill(s, now, fx, energy, msg.nivel_final, msg.reason)
    eng.send(fx, point_id, SessionAck(session_id=msg.session_id))


def completion_refusal(
    msg: SessionComplete, nivel_inicial: float, capacidade_kwh: float
) -> str | None:
    """Why a completion's figures are out of bounds for its session, or None.

    Every figure is finite (the schema bounds them); the reported initial level is
    the session's own (within rounding); the final level is not below the initial
    one (the reported one, nor the session's), and no energy figure exceeds the
    session's capacity. (Energy is also cut at the battery's room when billed.)
    """
    if not abs(msg.nivel_inicial - nivel_inicial) <= LEVEL_TOLERANCE:  # NaN too
        return f"nivel_inicial {msg.nivel_inicial} is not the session's {nivel_inicial}"
    if msg.nivel_final < max(msg.nivel_inicial, nivel_inicial):
        return (
            f"nivel_final {msg.nivel_final} below nivel_inicial "
            f"{max(msg.nivel_inicial, nivel_inicial)}"
        )
    if msg.energia_kwh > capacidade_kwh:
        return f"energia_kwh {msg.energia_kwh} above the capacity {capacidade_kwh}"
    measured = msg.energia_medida_kwh
    if measured is not None and not (math.isfinite(measured) and 0 <= measured <= capacidade_kwh):
        return f"energia_medida_kwh {measured} outside 0-{capacidade_kwh}"
    return None


def station_unreachable(eng: Engine, point_id: str, now: float) -> list[Effect]:
    """The ROUTER could not route to the station: a pending start fails at once."""
    fx: list[Effect] = []
    eng.station_unreachable(point_id, now, fx)
    return fx
