"""Vehicle requests: one handler per request type, each appending effects.

Requests arrive schema-validated; the vehicle id was resolved by the edge.
Every handler appends exactly one :class:`Reply` to the request, except an
accepted ``chegada``, whose reply waits for the station's ``ack`` (see
:meth:`broker.core.engine.Engine.start_session`).
"""

from __future__ import annotations

from typing import Any, Final

from msgspec import Raw

from broker.core.effects import Effect, Persist, Reply
from broker.core.engine import Engine
from broker.core.points import PointState, holds_turn
from broker.core.queues import Reservation, position_of
from broker.core.sessions import PendingStart, pending_key
from common.messages import (
    MAX_LIMIT,
    REPLY_TYPES,
    Bateria,
    Cancelar,
    Chegada,
    Consulta,
    Custos,
    Parar,
    Ping,
    Reserva,
    StatusQuery,
    VehicleRequest,
)
from common.timeutil import format_timestamp

MSG_RESERVED: Final = "Reserve confirmed"
MSG_ALREADY_QUEUED: Final = "Vehicle already in queue"
MSG_QUEUE_FULL: Final = "Queue full"
MSG_INVALID: Final = "Invalid request"


def handle(
    eng: Engine, conn: int, vehicle_id: str, req: VehicleRequest, now: float
) -> list[Effect]:
    """Dispatch one request; unknown types or mismatched data get ``erro invalid``."""
    fx: list[Effect] = []
    data = req.data
    rtype = REPLY_TYPES.get(req.type)

    def reply(payload: Any, kind: str | None = None, truncated: bool = False) -> None:
        fx.append(Reply(conn, req.id, kind or rtype or "erro", payload, truncated))

    if rtype is None:
        reply({"code": "unknown_type", "message": f"Unknown request type {req.type!r}"}, "erro")
    elif isinstance(data, Ping) and req.type == "ping":
        reply({})
    elif isinstance(data, Bateria) and req.type == "bateria":
        reply(_bateria(eng, vehicle_id, data, now, fx))
    elif isinstance(data, Consulta) and req.type == "consulta":
        points, truncated = _consulta(eng, data, now)
        reply(points, truncated=truncated)
    elif isinstance(data, Reserva) and req.type == "reserva":
        answer, after = _reserva(eng, vehicle_id, data, now, fx)
        reply(answer)
        fx.extend(after)
    elif isinstance(data, Cancelar) and req.type == "cancelar":
        reply(_cancelar(eng, vehicle_id, data, now, fx))
    elif isinstance(data, Chegada) and req.type == "chegada":
        started = _chegada(eng, conn, req, vehicle_id, data, now, fx)
        if started is not None:
            reply(started)
    elif isinstance(data, Parar) and req.type == "parar":
        reply(_parar(eng, vehicle_id, data, fx))
    elif isinstance(data, Custos) and req.type == "custos":
        reply(eng.accounts.statement(vehicle_id))
    elif isinstance(data, StatusQuery) and req.type == "status":
        reply(_status(eng, vehicle_id))
    else:
        reply({"code": "invalid", "message": f"Data does not match type {req.type!r}"}, "erro")
    return fx


# --- queries --------------------------------------------------------------------------


def _bateria(eng: Engine, vehicle_id: str, data: Bateria, now: float, fx: list[Effect]) -> Raw:
    """``{"pontos": [...]}``, already encoded (cached point views, see point_views)."""
    loc = data.localizacao
    eng.battery_report(vehicle_id, data.nivel_bateria, loc.latitude, loc.longitude, now, fx)
    points = eng.points

    def usable(pid: str) -> bool:
        return points[pid].usable

    max_km = data.distancia_max or None
    hits = eng.index.nearest(loc.latitude, loc.longitude, data.limite, max_km, usable)
    return Raw(b'{"pontos":' + eng.encoded_points(hits, now) + b"}")


def _consulta(eng: Engine, data: Consulta, now: float) -> tuple[Raw, bool]:
    """``[Point, ...]`` already encoded, and whether the list was cut at MAX_LIMIT.

    Without ``limite`` at most MAX_LIMIT points are returned; when more were in range
    the reply says ``"truncated": true`` (docs/protocol.md).
    """
    loc = data.localizacao
    max_km = data.distancia_max or None
    truncated = False
    if data.limite is None:
        hits = eng.index.nearest(loc.latitude, loc.longitude, MAX_LIMIT + 1, max_km)
        if len(hits) > MAX_LIMIT:
            hits, truncated = hits[:MAX_LIMIT], True
    else:
        hits = eng.index.nearest(loc.latitude, loc.longitude, data.limite, max_km)
    return Raw(eng.encoded_points(hits, now)), truncated


def _status(eng: Engine, vehicle_id: str) -> dict[str, Any]:
    r = eng.res_by_vehicle.get(vehicle_id)
    reserva = None
    if r is not None:
        reserva = r.view(position_of(eng.points[r.point_id].queue, vehicle_id))
    s = eng.session_by_vehicle.get(vehicle_id)
    sessao: dict[str, Any] | None = s.view() if s is not None else None
    if sessao is None:
        for pend in eng.pending.values():
            if pend.vehicle_id == vehicle_id:
                sessao = {
                    "session_id": pend.session_id,
                    "vehicle_id": vehicle_id,
                    "id_ponto_recarga": pend.point_id,
                    "estado": "iniciando",
                }
    return {"reserva": reserva, "sessao": sessao}


# --- reservations ---------------------------------------------------------------------


def _refusal(vehicle_id: str, point_id: str, code: str, message: str) -> dict[str, Any]:
    return {
        "status": "error",
        "code": code,
        "message": message,
        "vehicle_id": vehicle_id,
        "id_ponto_recarga": point_id,
    }


def _reserva(
    eng: Engine, vehicle_id: str, data: Reserva, now: float, fx: list[Effect]
) -> tuple[dict[str, Any], list[Effect]]:
    """The reply data, and the effects that must follow the reply (the turn, if granted)."""
    pid = data.id_ponto_recarga
    p = eng.points.get(pid)
    if p is None:
        return _refusal(vehicle_id, pid, "unknown_point", f"Unknown point {pid}"), []
    if not p.online:
        return _refusal(vehicle_id, pid, "point_offline", f"Point {pid} is offline"), []
    if not p.usable:
        return _refusal(vehicle_id, pid, "point_unavailable", f"Point {pid} reports a fault"), []
    current = eng.res_by_vehicle.get(vehicle_id)
    if current is not None and current.point_id == pid:
        return _refusal(vehicle_id, pid, "already_queued", MSG_ALREADY_QUEUED), []
    if current is not None:
        return _refusal(
            vehicle_id,
            pid,
            "already_reserved",
            f"Vehicle already holds a reservation at {current.point_id}",
        ), []
    if len(p.queue) >= eng.cfg.queue_capacity:
        return _refusal(vehicle_id, pid, "queue_full", MSG_QUEUE_FULL), []
    eng.order += 1
    r = Reservation(
        id=eng.new_id("res"),
        vehicle_id=vehicle_id,
        point_id=pid,
        created_at=now,
        eta_s=float(data.tempo_estimado) * 60.0,
        order=eng.order,
    )
    eng.add_reservation(p, r, fx)
    eng.publish(
        fx,
        "reservation.created",
        {
            "reservation_id": r.id,
            "vehicle_id": vehicle_id,
            "point_id": pid,
            "posicao": len(p.queue),
            "tempo_estimado": data.tempo_estimado,
        },
        now,
    )
    turn_fx: list[Effect] = []
    eng.refresh(p, now, turn_fx)
    answer: dict[str, Any] = {
        "status": "success",
        "code": "reserved",
        "message": MSG_RESERVED,
        "vehicle_id": vehicle_id,
        "id_ponto_recarga": pid,
        "reservation_id": r.id,
        "posicao": position_of(p.queue, vehicle_id),
    }
    if r.deadline is not None:
        answer["expira_em"] = format_timestamp(r.deadline)
    return answer, turn_fx


def _cancelar(
    eng: Engine, vehicle_id: str, data: Cancelar, now: float, fx: list[Effect]
) -> dict[str, Any]:
    pid = data.id_ponto_recarga
    r = eng.res_by_vehicle.get(vehicle_id)
    if r is None or r.point_id != pid:
        return {
            "status": "error",
            "code": "no_reservation",
            "message": f"No reservation at {pid}",
            "vehicle_id": vehicle_id,
            "id_ponto_recarga": pid,
        }
    eng.cancel(r, now, fx, "vehicle", push=False)
    eng.refresh(eng.points[pid], now, fx)
    return {
        "status": "success",
        "code": "cancelled",
        "message": "Reservation cancelled",
        "vehicle_id": vehicle_id,
        "id_ponto_recarga": pid,
        "reservation_id": r.id,
    }


# --- arrival and charging -------------------------------------------------------------


def _chegada(
    eng: Engine,
    conn: int,
    req: VehicleRequest,
    vehicle_id: str,
    data: Chegada,
    now: float,
    fx: list[Effect],
) -> dict[str, Any] | None:
    """A refusal to reply now, or None when ``start`` was sent (reply on ack)."""
    pid = data.id_ponto_recarga

    def refuse(code: str, message: str) -> dict[str, Any]:
        return _refusal(vehicle_id, pid, code, message)

    if data.nivel_carregar <= data.nivel_bateria:
        return refuse("invalid", "nivel_carregar must be above nivel_bateria")
    p = eng.points.get(pid)
    if p is None:
        return refuse("invalid", f"Unknown point {pid}")
    if not p.online:
        return refuse("point_offline", f"Point {pid} is offline")
    if not p.usable:
        return refuse("point_offline", f"Point {pid} reports a fault and cannot charge")
    own = eng.session_by_vehicle.get(vehicle_id)
    if own is not None:
        return refuse("point_busy", f"Vehicle is already charging at {own.point_id}")
    if any(pend.vehicle_id == vehicle_id for pend in eng.pending.values()):
        return refuse("point_busy", "A start for this vehicle is already in progress")
    pos = position_of(p.queue, vehicle_id)
    free = p.session is None and p.pending is None
    if pos == 1 and free and holds_turn(p):
        _start(eng, p, conn, req, vehicle_id, data, p.queue[0].id, now, fx)
        return None
    if pos >= 1:
        return refuse("not_your_turn", f"Not your turn: position {pos} in the queue")
    if p.queue:
        return refuse("no_reservation", f"Point {pid} has a queue and no reservation of yours")
    if not free:
        return refuse("point_busy", f"Point {pid} is charging another vehicle")
    _start(eng, p, conn, req, vehicle_id, data, None, now, fx)
    return None


def _start(
    eng: Engine,
    p: PointState,
    conn: int,
    req: VehicleRequest,
    vehicle_id: str,
    data: Chegada,
    reservation_id: str | None,
    now: float,
    fx: list[Effect],
) -> None:
    session_id = eng.new_id("ses")
    cmd_id = eng.command(
        fx,
        p.id,
        "start",
        session_id=session_id,
        vehicle_id=vehicle_id,
        nivel_bateria=data.nivel_bateria,
        nivel_carregar=data.nivel_carregar,
        capacidade_kwh=data.capacidade_kwh,
    )
    pend = PendingStart(
        cmd_id=cmd_id,
        session_id=session_id,
        vehicle_id=vehicle_id,
        point_id=p.id,
        conn=conn,
        request_id=req.id,
        nivel_bateria=data.nivel_bateria,
        nivel_carregar=data.nivel_carregar,
        capacidade_kwh=data.capacidade_kwh,
        payment_method=data.metodo_pagamento,
        reservation_id=reservation_id,
        deadline=now + eng.cfg.ack_timeout_s,
    )
    eng.pending[cmd_id] = pend
    p.pending = pend
    eng.timers.schedule(pend.deadline, "ack", cmd_id)
    fx.append(Persist("meta", pending_key(session_id), pend.record()))


def _parar(eng: Engine, vehicle_id: str, data: Parar, fx: list[Effect]) -> dict[str, Any]:
    """Ask the station to stop; the reply does not wait for its ack (see docs/rules.md)."""
    pid = data.id_ponto_recarga
    s = eng.session_by_vehicle.get(vehicle_id)
    if s is None or s.point_id != pid:
        return {
            "status": "error",
            "code": "no_session",
            "message": f"No running session at {pid}",
            "vehicle_id": vehicle_id,
            "id_ponto_recarga": pid,
        }
    eng.command(fx, pid, "stop", session_id=s.id)
    return {
        "status": "success",
        "code": "stopping",
        "message": "Stop requested; the session completes with the energy delivered so far",
        "vehicle_id": vehicle_id,
        "id_ponto_recarga": pid,
        "session_id": s.id,
    }
