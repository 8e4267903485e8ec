"""OCPI commands carried out as a roaming driver on the broker's vehicle protocol.

An eMSP's token becomes one of the broker's vehicles (:func:`vehicle_id_for`),
so a roaming driver queues, charges and is billed exactly as any other driver
(the core's rules, its accounts, the billing ledger). Each command is checked
at once (:meth:`Commander.accept`: the CommandResponse), then carried out in
the background over a vehicle connection, and its CommandResult is queued in
the outbox for the eMSP's ``response_url`` (delivered in order, retried).

| OCPI command       | vehicle request | result from the broker's answer          |
|--------------------|-----------------|------------------------------------------|
| START_SESSION      | ``chegada``     | started -> ACCEPTED; point_busy,         |
|                    |                 | not_your_turn, no_reservation ->         |
|                    |                 | EVSE_OCCUPIED; point_offline/unavailable |
|                    |                 | -> EVSE_INOPERATIVE; unreachable -> FAILED |
| STOP_SESSION       | ``parar``       | stopping -> ACCEPTED; no_session -> REJECTED |
| RESERVE_NOW        | ``reserva``     | reserved -> ACCEPTED; queue_full,        |
|                    |                 | already_* -> REJECTED; offline ->        |
|                    |                 | EVSE_INOPERATIVE                         |
| CANCEL_RESERVATION | ``cancelar``    | cancelled -> ACCEPTED; no_reservation -> |
|                    |                 | UNKNOWN_RESERVATION                      |
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from broker.consumers.ocpi.mapping import Driver, LocationsView
from broker.consumers.ocpi.models import (
    CancelReservation,
    CommandResponse,
    CommandResult,
    CommandResultType,
    DisplayText,
    ReserveNow,
    StartSession,
    StopSession,
    Token,
    encode,
)
from broker.consumers.ocpi.store import OcpiStore, Partner, Push
from common.errors import EVError
from common.timeutil import parse_timestamp
from vehicle.client import VehicleClient

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S: Final = 30
PAYMENT: Final = "Cartão de crédito"  # the eMSP pays; the broker's bill names a card
START_LEVEL: Final = 0.0  # the core needs levels OCPI does not give: charge until stopped/full
TARGET_LEVEL: Final = 100.0
MAX_ETA_MIN: Final = 240.0

START_RESULTS: Final[dict[str, CommandResultType]] = {
    "started": "ACCEPTED",
    "point_busy": "EVSE_OCCUPIED",
    "not_your_turn": "EVSE_OCCUPIED",
    "no_reservation": "EVSE_OCCUPIED",
    "point_offline": "EVSE_INOPERATIVE",
    "point_unavailable": "EVSE_INOPERATIVE",
    "unknown_point": "EVSE_INOPERATIVE",
    "point_unreachable": "FAILED",
}
RESERVE_RESULTS: Final[dict[str, CommandResultType]] = {
    "reserved": "ACCEPTED",
    "point_offline": "EVSE_INOPERATIVE",
    "point_unavailable": "EVSE_INOPERATIVE",
    "unknown_point": "EVSE_INOPERATIVE",
}


def vehicle_id_for(country_code: str, party_id: str, uid: str) -> str:
    """The broker vehicle id of an eMSP token: ``ocpi.<CC><PTY>.<uid>`` (hashed if unfit)."""
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", uid)
    if clean != uid or len(clean) > 40:
        clean = clean[:30] + "_" + hashlib.sha1(uid.encode()).hexdigest()[:8]
    return f"ocpi.{country_code}{party_id}.{clean}"


@dataclass(frozen=True, slots=True)
class Refusal:
    response: CommandResponse


def _text(msg: str) -> list[DisplayText]:
    return [DisplayText(language="en", text=msg[:512])]


class Commander:
    """Checks commands, carries them out as vehicles, queues their results."""

    def __init__(
        self,
        store: OcpiStore,
        view: LocationsView,
        *,
        host: str,
        port: int,
        kick: Callable[[str], None],
        capacity_kwh: float = 60.0,
    ) -> None:
        self.store = store
        self.view = view
        self.host = host
        self.port = port
        self.kick = kick
        self.capacity_kwh = capacity_kwh
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the immediate answer -------------------------------------------------------

    def accept(self, partner: Partner, cmd: Any) -> CommandResponse:
        """The CommandResponse; when ACCEPTED, the command runs in the background."""
        match cmd:
            case StartSession() | ReserveNow():
                point = self.view.point_of(cmd.location_id, cmd.evse_uid)
                if point is None:
                    return self._reject("REJECTED", "unknown location or EVSE")
                if not self.authorized(partner, cmd.token):
                    return self._reject("REJECTED", "token not valid")
                driver = self._driver(partner, cmd.token, cmd.authorization_reference)
                self._spawn(self._run(partner, driver, cmd, point.id))
            case StopSession():
                running = self.view.state.running.get(cmd.session_id)
                owner = self.store.driver(running.vehicle_id) if running else None
                if running is None or owner is None or owner.partner != partner.name:
                    return self._reject("UNKNOWN_SESSION", "no such session of this eMSP")
                self._spawn(self._run(partner, owner, cmd, running.point_id))
            case CancelReservation():
                held = self.store.reservation(partner.name, cmd.reservation_id)
                if held is None:
                    return self._reject("REJECTED", "unknown reservation")
                holder = self.store.driver(held[0])
                if holder is None:
                    return self._reject("REJECTED", "unknown reservation")
                self._spawn(self._run(partner, holder, cmd, held[1]))
            case _:
                return self._reject("NOT_SUPPORTED", "command not supported")
        return CommandResponse(result="ACCEPTED", timeout=COMMAND_TIMEOUT_S)

    @staticmethod
    def _reject(result: Any, msg: str) -> CommandResponse:
        return CommandResponse(result=result, timeout=COMMAND_TIMEOUT_S, message=_text(msg))

    def authorized(self, partner: Partner, token: Token) -> bool:
        """A token is good when the eMSP says it is valid and its cached copy agrees."""
        if not token.valid:
            return False
        cached = self.store.token(token.uid, token.type, partner.name)
        return cached is None or bool(cached.get("valid"))

    def _driver(self, partner: Partner, token: Token, ref: str | None) -> Driver:
        d = Driver(
            vehicle_id=vehicle_id_for(token.country_code, token.party_id, token.uid),
            partner=partner.name,
            country_code=token.country_code,
            party_id=token.party_id,
            uid=token.uid,
            type=token.type,
            contract_id=token.contract_id,
            auth_method="COMMAND",
            authorization_reference=ref,
        )
        self.store.put_driver(d)
        return d

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()

    # --- carrying it out ------------------------------------------------------------

    async def _run(self, partner: Partner, d: Driver, cmd: Any, point_id: str) -> None:
        try:
            result, msg = await self._carry_out(partner, d, cmd, point_id)
        except EVError as exc:
            result, msg = "FAILED", f"{exc.code}: {exc.message}"
        except Exception as exc:  # the eMSP still gets an answer
            log.exception("command %s failed", type(cmd).__name__)
            result, msg = "FAILED", type(exc).__name__
        # (ignored below) the result text is one of the OCPI literals, checked above
        body = encode(CommandResult(result=result, message=_text(msg) if msg else None))  # type: ignore[arg-type]
        self.store.enqueue([Push(partner.name, "POST", cmd.response_url, body)])
        self.kick(partner.name)

    async def _carry_out(
        self, partner: Partner, d: Driver, cmd: Any, point_id: str
    ) -> tuple[str, str]:
        match cmd:
            case StartSession():
                reply = await self._ask(d, "chegada", {
                    "id_ponto_recarga": point_id,
                    "nivel_bateria": START_LEVEL,
                    "nivel_carregar": TARGET_LEVEL,
                    "metodo_pagamento": PAYMENT,
                    "capacidade_kwh": self.capacity_kwh,
                })  # fmt: skip
                code = str(reply.get("code"))
                return START_RESULTS.get(code, "REJECTED"), str(reply.get("message") or code)
            case StopSession():
                reply = await self._ask(d, "parar", {"id_ponto_recarga": point_id})
                code = str(reply.get("code"))
                return ("ACCEPTED" if code == "stopping" else "REJECTED"), code
            case ReserveNow():
                try:
                    minutes = (parse_timestamp(cmd.expiry_date) - _now()) / 60
                except ValueError:
                    return "REJECTED", "expiry_date is not a DateTime"
                eta = max(0.0, min(MAX_ETA_MIN, minutes))
                reply = await self._ask(
                    d, "reserva", {"id_ponto_recarga": point_id, "tempo_estimado": round(eta, 2)}
                )
                code = str(reply.get("code"))
                if code == "reserved":
                    self.store.put_reservation(
                        partner.name, cmd.reservation_id, d.vehicle_id, point_id
                    )
                return RESERVE_RESULTS.get(code, "REJECTED"), str(reply.get("message") or code)
            case CancelReservation():
                reply = await self._ask(d, "cancelar", {"id_ponto_recarga": point_id})
                code = str(reply.get("code"))
                if code == "cancelled":
                    self.store.drop_reservation(partner.name, cmd.reservation_id)
                    return "ACCEPTED", code
                return "UNKNOWN_RESERVATION", code
        return "NOT_SUPPORTED", ""

    async def _ask(self, d: Driver, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        """One request as the driver's vehicle; registers the id if the broker wants it."""
        token = self.store.vehicle_token(d.vehicle_id)
        for attempt in range(2):
            client = VehicleClient(
                self.host, self.port, d.vehicle_id, reconnect=False, token=token,
                register=attempt == 1 and token is None,
                on_token=lambda t: self.store.keep_vehicle_token(d.vehicle_id, t),
            )  # fmt: skip
            try:
                await client.connect()
                payload = {"id_veiculo": d.vehicle_id, **data}
                reply = await client.request(type_, payload, timeout=COMMAND_TIMEOUT_S)
                return reply.data if isinstance(reply.data, dict) else {}
            except EVError as exc:
                if exc.code != "unauthenticated" or attempt:
                    raise
                token = self.store.vehicle_token(d.vehicle_id)
            finally:
                await client.close()
        return {}


def _now() -> float:
    return time.time()
