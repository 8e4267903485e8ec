"""Vehicle requests: one handler per request type, each appending effects.

Requests arrive schema-validated; the vehicle id was resolved by the edge.
Every handler appends exactly one :class:`Reply` to the request, except an
accepted ``chegada``, whose reply waits for the station's ``ack`` (see
:meth:`broker.core.engine.Engine.start_session`).
"""

from __future__ import annotations

from typing import Any, Final

from msgspec import UNSET, Raw

from broker.core.effects import Effect, Push, Reply
from broker.core.engine import Engine
from broker.core.points import PointState, holds_turn
from broker.core.queues import position_of
from broker.core.read_path import bateria_points, consulta_points
from broker.core.sessions import NO_CONNECTION
from common.errors import (
    AlreadyQueued,
    AlreadyReserved,
    InvalidRequest,
    NoReservation,
    NoSession,
    NotYourTurn,
    PointBusy,
    PointOffline,
    PointUnavailable,
    QueueFull,
    RateLimited,
    RefusedInvalid,
    RequestRefused,
    UnknownPoint,
    UnknownType,
)
from common.events import ReservationCreated
from common.messages import (
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
from common.replies import (
    PONG,
    Cancelled,
    Refusal,
    ReplyData,
    Reserved,
    SessionView,
    Stopping,
    VehicleStatus,
    error_data,
    refusal,
)
from common.timeutil import format_timestamp

MSG_RESERVED: Final = "Reserve confirmed"
MSG_ALREADY_QUEUED: Final = "Vehicle already in queue"
MSG_QUEUE_FULL: Final = "Queue full"


def handle(
    eng: Engine,
    conn: int,
    vehicle_id: str,
    req: VehicleRequest,
    now: float,
    address: str | None = None,
) -> list[Effect]:
    """Dispatch one request; unknown types or mismatched data get ``erro invalid``.

    ``address``: the network address the request came from (the per-address caps).
    """
    fx: list[Effect] = []
    data = req.data
    rtype = REPLY_TYPES.get(req.type)

    def reply(payload: ReplyData, kind: str | None = None, truncated: bool = False) -> None:
        fx.append(Reply(conn, req.id, kind or rtype or "erro", payload, truncated))

    if rtype is None:
        reply(error_data(UnknownType(f"Unknown request type {req.type!r}")), "erro")
    elif isinstance(data, Ping) and req.type == "ping":
        reply(PONG)
    elif isinstance(data, Bateria) and req.type == "bateria":
        reply(_bateria(eng, vehicle_id, data, now, fx))
    elif isinstance(data, Consulta) and req.type == "consulta":
        points, truncated = _consulta(eng, data, now)
        reply(points, truncated=truncated)
    elif isinstance(data, Reserva) and req.type == "reserva":
        cap = eng.config.max_reservations_per_address
        if (
            address is not None
            and eng.reservations_of_address(address) >= cap
            and eng.reservation_of(vehicle_id) is None  # else its own refusal, as before
        ):
            eng.count("reservations_rate_limited")
            msg = f"{address} already holds {cap} live reservations"
            reply(error_data(RateLimited(msg)), "erro")
        else:
            answer, after = _reserva(eng, vehicle_id, data, now, fx, address)
            if not (isinstance(answer, Reserved) and _wait_hold(eng, conn, req.id, answer, after)):
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
        reply(eng.statement(vehicle_id))
    elif isinstance(data, StatusQuery) and req.type == "status":
        reply(_status(eng, vehicle_id, now))
    else:
        reply(error_data(InvalidRequest(f"Data does not match type {req.type!r}")), "erro")
    return fx


# --- queries --------------------------------------------------------------------------


def _bateria(eng: Engine, vehicle_id: str, data: Bateria, now: float, fx: list[Effect]) -> Raw:
    """``{"pontos": [...]}``, already encoded (the read path, see read_path)."""
    loc = data.localizacao
    eng.battery_report(vehicle_id, data.nivel_bateria, loc.latitude, loc.longitude, now, fx)
    return bateria_points(eng.points.reads, data, now)


def _consulta(eng: Engine, data: Consulta, now: float) -> tuple[Raw, bool]:
    """``[Point, ...]`` already encoded, and whether the list was cut at MAX_LIMIT."""
    return consulta_points(eng.points.reads, data, now)


def _status(eng: Engine, vehicle_id: str, now: float) -> VehicleStatus:
    r = eng.reservation_of(vehicle_id)
    reserva = None
    if r is not None:
        p = eng.point(r.point_id)
        reserva = r.view(position_of(p.queue, vehicle_id) if p is not None else 0)
    s = eng.session_of(vehicle_id)
    sessao = eng.session_view(s, now) if s is not None else None
    if sessao is None:
        pend = eng.pending_of(vehicle_id)
        if pend is not None:
            sessao = SessionView(
                session_id=pend.session_id,
                vehicle_id=vehicle_id,
                id_ponto_recarga=pend.point_id,
                estado="iniciando",
            )
    return VehicleStatus(reserva=reserva, sessao=sessao)


# --- reservations ---------------------------------------------------------------------


def _usable_point(eng: Engine, pid: str) -> PointState | RequestRefused:
    """The point, or why ``reserva`` and ``chegada`` alike refuse it (one rule for both)."""
    p = eng.point(pid)
    if p is None:
        return UnknownPoint(f"Unknown point {pid}")
    if p.out_of_service:
        return PointUnavailable(f"Point {pid} is out of service: {p.oos_reason}")
    if not p.online:
        return PointOffline(f"Point {pid} is offline")
    if not p.usable:
        return PointUnavailable(f"Point {pid} reports a fault")
    return p


def _reserva(
    eng: Engine,
    vehicle_id: str,
    data: Reserva,
    now: float,
    fx: list[Effect],
    address: str | None = None,
) -> tuple[Reserved | Refusal, list[Effect]]:
    """The reply data, and the effects that must follow the reply (the turn, if granted)."""
    pid = data.id_ponto_recarga
    p = _usable_point(eng, pid)
    if isinstance(p, RequestRefused):
        return refusal(p, vehicle_id, pid), []
    current = eng.reservation_of(vehicle_id)
    if current is not None and current.point_id == pid:
        return refusal(AlreadyQueued(MSG_ALREADY_QUEUED), vehicle_id, pid), []
    if current is not None:
        err = AlreadyReserved(f"Vehicle already holds a reservation at {current.point_id}")
        return refusal(err, vehicle_id, pid), []
    if len(p.queue) >= eng.config.queue_capacity:
        return refusal(QueueFull(MSG_QUEUE_FULL), vehicle_id, pid), []
    r = eng.new_reservation(p, vehicle_id, float(data.tempo_estimado) * 60.0, now, fx, address)
    eng.publish(
        fx,
        ReservationCreated(
            reservation_id=r.id,
            vehicle_id=vehicle_id,
            point_id=pid,
            posicao=len(p.queue),
            tempo_estimado=data.tempo_estimado,
        ),
        now,
    )
    turn_fx: list[Effect] = []
    eng.refresh(p, now, turn_fx)
    answer = Reserved(
        message=MSG_RESERVED,
        vehicle_id=vehicle_id,
        id_ponto_recarga=pid,
        reservation_id=r.id,
        posicao=position_of(p.queue, vehicle_id),
        expira_em=UNSET if r.deadline is None else format_timestamp(r.deadline),
    )
    return answer, turn_fx


def _wait_hold(
    eng: Engine, conn: int, request_id: Any, answer: Reserved, after: list[Effect]
) -> bool:
    """A reservation that got the turn at once at a point whose station confirms holds
    is confirmed only once the station holds it: the reply and the ``sua_vez`` push
    (taken out of ``after``) wait for the hold's ack. True when they wait; the rest of
    ``after`` goes out now."""
    p = eng.point(answer.id_ponto_recarga)
    if answer.expira_em is UNSET or p is None or not p.confirms_holds:
        return False
    r = eng.reservation_of(answer.vehicle_id)
    if r is None:
        return False
    pushes: list[Effect] = [e for e in after if isinstance(e, Push)]
    if not eng.wait_hold(r, conn, request_id, answer, pushes):
        return False
    after[:] = [e for e in after if not isinstance(e, Push)]
    return True


def _cancelar(
    eng: Engine, vehicle_id: str, data: Cancelar, now: float, fx: list[Effect]
) -> Cancelled | Refusal:
    pid = data.id_ponto_recarga
    r = eng.reservation_of(vehicle_id)
    p = eng.point(pid)
    if r is None or r.point_id != pid or p is None:
        return refusal(NoReservation(f"No reservation at {pid}"), vehicle_id, pid)
    eng.cancel(r, now, fx, "vehicle", push=False)
    eng.refresh(p, now, fx)
    return Cancelled(
        message="Reservation cancelled",
        vehicle_id=vehicle_id,
        id_ponto_recarga=pid,
        reservation_id=r.id,
    )


# --- arrival and charging -------------------------------------------------------------


def _chegada(
    eng: Engine,
    conn: int,
    req: VehicleRequest,
    vehicle_id: str,
    data: Chegada,
    now: float,
    fx: list[Effect],
) -> Refusal | None:
    """A refusal to reply now, or None when ``start`` was sent (reply on ack)."""
    pid = data.id_ponto_recarga
    if data.nivel_carregar <= data.nivel_bateria:
        err: RequestRefused = RefusedInvalid("nivel_carregar must be above nivel_bateria")
        return refusal(err, vehicle_id, pid)
    p = _usable_point(eng, pid)
    if isinstance(p, RequestRefused):
        return refusal(p, vehicle_id, pid)
    own = eng.session_of(vehicle_id)
    if own is not None:
        err = PointBusy(f"Vehicle is already charging at {own.point_id}")
        return refusal(err, vehicle_id, pid)
    pend = eng.pending_of(vehicle_id)
    if pend is not None:
        if pend.conn == NO_CONNECTION and pend.point_id == pid:
            # a start restored after a restart has lost its requester: the vehicle
            # asking again (a gateway resending its request) gets the ack's reply
            pend.conn, pend.request_id = conn, req.id
            return None
        err = PointBusy("A start for this vehicle is already in progress")
        return refusal(err, vehicle_id, pid)
    pos = position_of(p.queue, vehicle_id)
    free = p.session is None and p.pending is None
    if pos == 1 and free and holds_turn(p):
        eng.begin_start(p, conn, req.id, vehicle_id, data, p.queue[0].id, now, fx)
        return None
    if pos >= 1:
        err = NotYourTurn(f"Not your turn: position {pos} in the queue")
    elif p.queue:
        err = NoReservation(f"Point {pid} has a queue and no reservation of yours")
    elif not free:
        err = PointBusy(f"Point {pid} is charging another vehicle")
    else:
        eng.begin_start(p, conn, req.id, vehicle_id, data, None, now, fx)
        return None
    return refusal(err, vehicle_id, pid)


def _parar(eng: Engine, vehicle_id: str, data: Parar, fx: list[Effect]) -> Stopping | Refusal:
    """Ask the station to stop; the reply does not wait for its ack (see docs/rules.md)."""
    pid = data.id_ponto_recarga
    s = eng.session_of(vehicle_id)
    if s is None or s.point_id != pid:
        return refusal(NoSession(f"No running session at {pid}"), vehicle_id, pid)
    eng.send_stop(fx, pid, s.id)
    return Stopping(
        message="Stop requested; the session completes with the energy delivered so far",
        vehicle_id=vehicle_id,
        id_ponto_recarga=pid,
        session_id=s.id,
    )
