"""A scripted trip: low battery -> best point -> reserve -> turn -> arrive -> charge -> bill.

The choice of point is pure (:func:`rank_points`): the score of a point is the
travel time (distance at :attr:`DriveConfig.kmh`) plus its estimated wait, in
minutes; offline and faulted points are skipped. The trip itself
(:func:`run_drive`) talks to the broker through a :class:`VehicleClient` and
reacts to pushes: ``sua_vez`` lets it arrive, ``reserva_expirada`` and
``reserva_cancelada`` make it choose again, ``custo_final`` is the bill.

``speed`` is simulated seconds per real second (as for ``ev-station run``):
with the default 60, a 3-minute drive takes 3 real seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from common.errors import (
    AlreadyQueued,
    AlreadyReserved,
    EVError,
    NoReservation,
    NotYourTurn,
    PointBusy,
    PointOffline,
    PointUnavailable,
    PointUnreachable,
    QueueFull,
    RequestRefused,
    RequestTimeout,
    TransportError,
    UnknownPoint,
)
from vehicle.client import PushStream, VehicleClient

SKIPPED_STATES: Final = frozenset({"offline", "indisponivel"})
BILL_POLL_S: Final = 5.0

Say = Callable[[str], None]


class NoPointAvailable(RequestRefused):
    """No point could take the vehicle within the attempts allowed."""

    code = "no_point"


@dataclass(frozen=True)
class DriveConfig:
    lat: float
    lon: float
    battery: float = 15.0
    target: float = 80.0
    speed: float = 60.0  # simulated seconds per real second
    payment: str = "Pix"
    capacity_kwh: float = 60.0
    kmh: float = 40.0  # average travel speed in town
    attempts: int = 8
    retry_s: float = 2.0  # real seconds between rounds when every point refused


def travel_minutes(point: Mapping[str, Any], kmh: float) -> float:
    distance = point.get("distance")
    km = float(distance) if isinstance(distance, int | float) else 0.0
    return km / kmh * 60.0 if kmh > 0 else 0.0


def score(point: Mapping[str, Any], kmh: float) -> float:
    """Minutes until charging could start: travel time plus estimated wait."""
    wait = point.get("espera_estimada_min")
    return travel_minutes(point, kmh) + (float(wait) if isinstance(wait, int | float) else 0.0)


def rank_points(
    points: Iterable[Mapping[str, Any]], kmh: float, excluded: frozenset[str] = frozenset()
) -> list[Mapping[str, Any]]:
    """Usable points, best (lowest score) first; ties keep the nearest first."""
    usable = [
        p
        for p in points
        if p.get("id") not in excluded and str(p.get("estado", "")) not in SKIPPED_STATES
    ]
    return sorted(usable, key=lambda p: score(p, kmh))


async def wait_for_bill(
    client: VehicleClient,
    stream: PushStream,
    session_id: str | None,
    poll_s: float = BILL_POLL_S,
) -> dict[str, Any]:
    """The ``custo_final`` of ``session_id``.

    Pushes are not queued for a vehicle that was disconnected, so every
    ``poll_s`` seconds without the push the cost statement is read as well.
    """
    while True:
        try:
            push = await stream.next(poll_s)
        except RequestTimeout:
            bill = await _bill_from_statement(client, session_id)
            if bill is not None:
                return bill
            continue
        if push.type == "custo_final" and (
            session_id is None or push.data.get("session_id") == session_id
        ):
            return push.data


async def _bill_from_statement(
    client: VehicleClient, session_id: str | None
) -> dict[str, Any] | None:
    if session_id is None:
        return None
    try:
        statement = await client.custos()
    except TransportError:
        return None
    for s in statement.get("sessoes") or []:
        if s.get("session_id") == session_id:
            bill = dict(s)
            bill.setdefault("moeda", statement.get("moeda", "BRL"))
            return bill
    return None


class _Lost(Exception):
    """The reservation is gone (expired, cancelled, refused): choose again."""


async def _wait_turn(
    client: VehicleClient, stream: PushStream, point: str, travel_s: float, say: Say
) -> None:
    """Return once the vehicle drove there and holds the turn; _Lost when it never will."""
    travel = asyncio.ensure_future(asyncio.sleep(travel_s))
    have_turn = False
    try:
        while not (have_turn and travel.done()):
            if have_turn:
                await travel
                continue
            try:
                push = await stream.next(BILL_POLL_S)
            except RequestTimeout:
                state = await client.status()
                reserva = state.get("reserva")
                if not isinstance(reserva, dict):
                    raise _Lost("reservation no longer held") from None
                if reserva.get("turno") is True:  # the sua_vez push was missed
                    have_turn = True
                continue
            if push.data.get("id_ponto_recarga") != point:
                continue
            if push.type == "sua_vez":
                say(f"Our turn at {point}")
                have_turn = True
            elif push.type in ("reserva_expirada", "reserva_cancelada"):
                raise _Lost(f"reservation at {point}: {push.type}")
    finally:
        travel.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await travel


async def _reserve_best(
    client: VehicleClient, cfg: DriveConfig, excluded: set[str], say: Say
) -> tuple[str, float] | None:
    """Reserve the best point that accepts; (point id, travel minutes) or None."""
    points = await client.bateria(cfg.battery, cfg.lat, cfg.lon, limite=20)
    for p in rank_points(points, cfg.kmh, frozenset(excluded)):
        point = str(p.get("id"))
        minutes = round(min(travel_minutes(p, cfg.kmh), 240.0), 1)
        for _ in range(2):
            try:
                r = await client.reserva(point, minutes)
                say(f"Reserved {point} ({p.get('distance')} km, position {r.get('posicao', '?')})")
                return point, minutes
            except AlreadyQueued:
                say(f"Already in the queue of {point}")
                return point, minutes
            except AlreadyReserved:
                held = (await client.status()).get("reserva")
                other = held.get("id_ponto_recarga") if isinstance(held, dict) else None
                if not other:
                    break
                say(f"Cancelling the earlier reservation at {other}")
                with contextlib.suppress(RequestRefused):
                    await client.cancelar(str(other))
            except (QueueFull, PointOffline, PointUnavailable, UnknownPoint) as exc:
                say(f"{point} refused: {exc.code}")
                break
    return None


async def run_drive(client: VehicleClient, cfg: DriveConfig, say: Say) -> dict[str, Any]:
    """Drive, charge and return the bill (``custo_final`` data)."""
    excluded: set[str] = set()
    with client.pushes() as stream:
        for _ in range(cfg.attempts):
            chosen = await _reserve_best(client, cfg, excluded, say)
            if chosen is None:
                say("No point accepted the reservation; trying again")
                excluded.clear()
                await asyncio.sleep(cfg.retry_s)
                continue
            point, minutes = chosen
            try:
                await _wait_turn(client, stream, point, minutes * 60.0 / cfg.speed, say)
                session_id = await _arrive(client, stream, point, cfg, say)
            except _Lost as exc:
                say(f"{exc}; choosing again")
                excluded.add(point)
                continue
            say(f"Charging at {point} (session {session_id})")
            return await wait_for_bill(client, stream, session_id)
    raise NoPointAvailable(f"no point could charge the vehicle after {cfg.attempts} attempts")


async def _arrive(
    client: VehicleClient, stream: PushStream, point: str, cfg: DriveConfig, say: Say
) -> str | None:
    for _ in range(5):
        try:
            started = await client.chegada(
                point, cfg.battery, cfg.target, cfg.payment, capacidade_kwh=cfg.capacity_kwh
            )
            sid = started.get("session_id")
            return str(sid) if sid is not None else None
        except NotYourTurn as exc:
            say(f"Not our turn yet at {point}: {exc.message}")
            await _wait_turn(client, stream, point, 0.0, say)
        except (PointBusy, PointUnreachable) as exc:
            say(f"{point}: {exc.code}, retrying")
            await asyncio.sleep(1.0)
        except (NoReservation, PointOffline, PointUnavailable) as exc:
            raise _Lost(f"{point}: {exc.code}") from None
    with contextlib.suppress(EVError):
        await client.cancelar(point)
    raise _Lost(f"{point} could not start charging")
