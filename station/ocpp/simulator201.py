"""A simulated OCPP 2.0.1 charger, built on the ``ocpp`` package's v201 ChargePoint.

The 2.0.1 twin of :mod:`station.ocpp.simulator` (same options, same test-facing
attributes), for the tests and demos: BootNotification, StatusNotification,
Heartbeat; ReserveNow / CancelReservation; RequestStartTransaction ->
TransactionEvent Started, Updated with meter values every ``meter_every_s``;
RequestStopTransaction -> Ended (Remote); SetVariables / GetVariables (kept in
``configuration``); ChangeAvailability; TriggerMessage; Reset; SetChargingProfile.
Transaction events are numbered by ``seqNo``; those that cannot be sent are kept
and replayed with ``offline`` once connected again, as OCPP 2.0.1 requires.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ocpp.routing import after, on
from ocpp.v201 import ChargePoint, call, call_result
from ocpp.v201.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from common.timeutil import format_timestamp
from station.ocpp.simulator import BACKOFF_MAX_S, SimOptions

log = logging.getLogger("station.ocpp.sim")


def _now() -> str:
    return format_timestamp(time.time())


# (ignored below) the ocpp library's ChargePoint is untyped (Any base class)
class _Protocol(ChargePoint):  # type: ignore[misc]
    def __init__(self, sim: SimCharger201, ws: ClientConnection) -> None:
        super().__init__(sim.charger_id, ws, response_timeout=10)
        self.sim = sim

    @on(Action.reserve_now)
    def on_reserve_now(self, id: int, **_: Any) -> call_result.ReserveNow:
        self.sim.received.append(("ReserveNow", id))
        if self.sim.transaction is not None:
            return call_result.ReserveNow(status="Occupied")
        if self.sim.options.reserve_answer != "Accepted":
            return call_result.ReserveNow(status=self.sim.options.reserve_answer)
        self.sim.reservation = id
        return call_result.ReserveNow(status="Accepted")

    @after(Action.reserve_now)
    async def after_reserve_now(self, **_: Any) -> None:
        if self.sim.reservation is not None and self.sim.transaction is None:
            await self.sim.status("Reserved")

    @on(Action.cancel_reservation)
    def on_cancel_reservation(self, reservation_id: int) -> call_result.CancelReservation:
        self.sim.received.append(("CancelReservation", reservation_id))
        if self.sim.reservation != reservation_id:
            return call_result.CancelReservation(status="Rejected")
        self.sim.reservation = None
        return call_result.CancelReservation(status="Accepted")

    @after(Action.cancel_reservation)
    async def after_cancel_reservation(self, **_: Any) -> None:
        if self.sim.reservation is None and self.sim.transaction is None:
            await self.sim.status("Available")

    @on(Action.request_start_transaction)
    def on_request_start(
        self, id_token: dict[str, Any], remote_start_id: int, **_: Any
    ) -> call_result.RequestStartTransaction:
        self.sim.received.append(("RequestStartTransaction", id_token["id_token"]))
        if self.sim.options.reject_starts or self.sim.transaction is not None:
            return call_result.RequestStartTransaction(status="Rejected")
        return call_result.RequestStartTransaction(status="Accepted")

    @after(Action.request_start_transaction)
    async def after_request_start(
        self, id_token: dict[str, Any], remote_start_id: int, **_: Any
    ) -> None:
        if not self.sim.options.reject_starts and self.sim.transaction is None:
            await self.sim.begin(id_token["id_token"], "RemoteStart", remote_start_id)

    @on(Action.request_stop_transaction)
    def on_request_stop(self, transaction_id: str) -> call_result.RequestStopTransaction:
        self.sim.received.append(("RequestStopTransaction", transaction_id))
        ok = self.sim.transaction == transaction_id
        return call_result.RequestStopTransaction(status="Accepted" if ok else "Rejected")

    @after(Action.request_stop_transaction)
    async def after_request_stop(self, transaction_id: str) -> None:
        if self.sim.transaction == transaction_id:
            await self.sim.end("Remote")

    @on(Action.set_variables)
    def on_set_variables(self, set_variable_data: list[dict[str, Any]]) -> Any:
        results = []
        for row in set_variable_data:
            key = f"{row['component']['name']}.{row['variable']['name']}"
            self.sim.configuration[key] = row["attribute_value"]
            self.sim.received.append(("SetVariables", key))
            results.append(
                {
                    "attribute_status": "Accepted",
                    "component": row["component"],
                    "variable": row["variable"],
                }
            )
        return call_result.SetVariables(set_variable_result=results)

    @on(Action.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]]) -> Any:
        results = []
        for row in get_variable_data:
            key = f"{row['component']['name']}.{row['variable']['name']}"
            self.sim.received.append(("GetVariables", key))
            value = self.sim.configuration.get(key)
            results.append(
                {
                    "attribute_status": "Accepted" if value is not None else "UnknownVariable",
                    "component": row["component"],
                    "variable": row["variable"],
                    **({"attribute_value": value} if value is not None else {}),
                }
            )
        return call_result.GetVariables(get_variable_result=results)

    @on(Action.change_availability)
    def on_change_availability(self, operational_status: str, **_: Any) -> Any:
        self.sim.received.append(("ChangeAvailability", operational_status))
        return call_result.ChangeAvailability(status="Accepted")

    @after(Action.change_availability)
    async def after_change_availability(self, operational_status: str, **_: Any) -> None:
        await self.sim.status("Unavailable" if operational_status == "Inoperative" else "Available")

    @on(Action.trigger_message)
    def on_trigger_message(self, requested_message: str, **_: Any) -> Any:
        self.sim.received.append(("TriggerMessage", requested_message))
        return call_result.TriggerMessage(status="Accepted")

    @after(Action.trigger_message)
    async def after_trigger_message(self, requested_message: str, **_: Any) -> None:
        if requested_message == "StatusNotification":
            await self.sim.status(self.sim.connector_status)

    @on(Action.reset)
    def on_reset(self, type: str, **_: Any) -> call_result.Reset:
        self.sim.received.append(("Reset", type))
        return call_result.Reset(status="Accepted")

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, evse_id: int, charging_profile: Any) -> Any:
        self.sim.received.append(("SetChargingProfile", charging_profile))
        return call_result.SetChargingProfile(status="Accepted")


@dataclass
class SimCharger201:
    """One simulated 2.0.1 charger with one EVSE (``options.connector``)."""

    url: str
    charger_id: str
    password: str
    options: SimOptions = field(default_factory=SimOptions)
    ssl: Any = None
    meter_wh: float = 0.0
    transaction: str | None = None
    reservation: int | None = None
    connector_status: str = "Available"
    heartbeat_s: float = 60.0
    received: list[tuple[str, Any]] = field(default_factory=list)
    completed: list[dict[str, Any]] = field(default_factory=list)
    configuration: dict[str, str] = field(default_factory=dict)
    answers: list[tuple[str, Any]] = field(default_factory=list)  # (eventType, response)
    booted: asyncio.Event = field(default_factory=asyncio.Event)
    charging: asyncio.Event = field(default_factory=asyncio.Event)
    connects: int = 0
    _cp: _Protocol | None = None
    _backlog: list[Any] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _meter_task: asyncio.Task[None] | None = None
    _stop: bool = False
    _offline_until: float = 0.0
    sent: list[Any] = field(default_factory=list)  # transaction events answered

    async def run(self) -> None:
        backoff = 0.1
        while not self._stop:
            try:
                await self._session()
                backoff = 0.1
            except (OSError, ConnectionClosed, TimeoutError, InvalidStatus) as exc:
                log.info("%s: connection lost or refused: %s", self.charger_id, exc)
            if not self.options.reconnect or self._stop:
                return
            await asyncio.sleep(max(backoff, self._offline_until - time.monotonic()))
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _session(self) -> None:
        headers = {}
        if self.password:
            auth = base64.b64encode(f"{self.charger_id}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {auth}"
        async with connect(
            f"{self.url}/{self.charger_id}",
            # (ignored below) websockets types subprotocols as Subprotocol (a NewType of str)
            subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
            additional_headers=headers,
            ssl=self.ssl,
            open_timeout=10,
            close_timeout=1,
        ) as ws:
            cp = _Protocol(self, ws)
            reader = asyncio.create_task(cp.start())
            try:
                self._cp = cp
                self.connects += 1
                if not self.booted.is_set():
                    conf = await cp.call(
                        call.BootNotification(
                            charging_station={"model": "SimCharger", "vendor_name": "evcharge"},
                            reason="PowerUp",
                        )
                    )
                    self.heartbeat_s = float(conf.interval) or 60.0
                    self.booted.set()
                await self.status("Occupied" if self.transaction is not None else "Available")
                while self._backlog:  # replayed in order, marked offline
                    event = self._backlog[0]
                    self.answers.append((event.event_type, await cp.call(event)))
                    self.sent.append(self._backlog.pop(0))
                while True:
                    done, _ = await asyncio.wait({reader}, timeout=self.heartbeat_s)
                    if done:
                        reader.result()
                    await cp.call(call.Heartbeat())
            finally:
                self._cp = None
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await reader

    async def close(self) -> None:
        self._stop = True
        if self._meter_task is not None:
            self._meter_task.cancel()
        cp = self._cp
        if cp is not None:
            await cp._connection.close()

    async def drop(self, offline_s: float = 0.0) -> None:
        """Cut the connection (the charger keeps running and reconnects after
        ``offline_s``, replaying the transaction events of the meantime)."""
        self._offline_until = time.monotonic() + offline_s
        cp = self._cp
        if cp is not None:
            await cp._connection.close()

    async def replay(self, event_type: str) -> Any:
        """Send the last event of ``event_type`` again (an answer the charger never got)."""
        assert self._cp is not None, "not connected"
        event = next(e for e in reversed(self.sent) if e.event_type == event_type)
        return await self._cp.call(event)

    async def status(self, state: str) -> None:
        self.connector_status = state
        cp = self._cp
        if cp is not None:
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                await cp.call(
                    call.StatusNotification(
                        timestamp=_now(),
                        connector_status=state,
                        evse_id=self.options.connector,
                        connector_id=1,
                    )
                )

    async def security_event(self, kind: str) -> None:
        assert self._cp is not None, "not connected"
        await self._cp.call(call.SecurityEventNotification(type=kind, timestamp=_now()))

    def _event(self, kind: str, trigger: str, **extra: Any) -> call.TransactionEvent:
        assert self.transaction is not None or kind == "Ended"
        info: dict[str, Any] = {"transaction_id": extra.pop("tx", self.transaction)}
        if "stopped_reason" in extra:
            info["stopped_reason"] = extra.pop("stopped_reason")
        if "remote_start_id" in extra:
            info["remote_start_id"] = extra.pop("remote_start_id")
        sample = {"value": round(self.meter_wh), "measurand": "Energy.Active.Import.Register"}
        return call.TransactionEvent(
            event_type=kind,
            timestamp=_now(),
            trigger_reason=trigger,
            seq_no=next(self._seq),
            transaction_info=info,
            meter_value=[{"timestamp": _now(), "sampled_value": [sample]}],
            offline=self._cp is None or None,
            **extra,
        )

    async def _send(self, event: call.TransactionEvent) -> Any:
        """A transaction event: sent now, or kept (offline) until connected again."""
        cp = self._cp
        if cp is None or self._backlog:
            event.offline = True
            self._backlog.append(event)
            return None
        try:
            answer = await cp.call(event)
        except (ConnectionClosed, TimeoutError):
            event.offline = True
            self._backlog.append(event)
            return None
        self.answers.append((event.event_type, answer))
        self.sent.append(event)
        return answer

    async def local_start(self, id_tag: str) -> str:
        """A driver's card: Authorize, then TransactionEvent Started."""
        cp = self._cp
        assert cp is not None, "not connected"
        conf = await cp.call(call.Authorize(id_token={"id_token": id_tag, "type": "ISO14443"}))
        if conf.id_token_info["status"] != "Accepted":
            return str(conf.id_token_info["status"])
        return await self.begin(id_tag, "Authorized", None, "ISO14443")

    async def begin(
        self, tag: str, trigger: str, remote_start_id: int | None, kind: str = "Central"
    ) -> str:
        self.transaction = uuid.uuid4().hex[:20]
        self.reservation = None
        extra: dict[str, Any] = {
            "id_token": {"id_token": tag, "type": kind},
            "evse": {"id": self.options.connector, "connector_id": 1},
        }
        if remote_start_id is not None:
            extra["remote_start_id"] = remote_start_id
        answer = await self._send(self._event("Started", trigger, **extra))
        status = "Accepted"
        if answer is not None and answer.id_token_info is not None:
            status = str(answer.id_token_info.get("status"))
        if status != "Accepted":
            await self.end("DeAuthorized")
            return status
        await self.status("Occupied")
        self.charging.set()
        self._meter_task = asyncio.create_task(self._meter(self.transaction))
        return status

    async def _meter(self, transaction_id: str) -> None:
        opts = self.options
        last = time.monotonic()
        while self.transaction == transaction_id:
            await asyncio.sleep(opts.meter_every_s)
            now = time.monotonic()
            self.meter_wh += opts.power_kw * 1000.0 / 3600.0 * (now - last) * opts.speed
            last = now
            if self.transaction == transaction_id:
                await self._send(self._event("Updated", "MeterValuePeriodic"))

    async def end(self, reason: str) -> None:
        tx = self.transaction
        if tx is None:
            return
        self.transaction = None
        self.charging.clear()
        if self._meter_task is not None and self._meter_task is not asyncio.current_task():
            self._meter_task.cancel()
        meter_stop = round(self.meter_wh)
        self.completed.append({"transaction_id": tx, "meter_stop": meter_stop, "reason": reason})
        trigger = "RemoteStop" if reason == "Remote" else "StopAuthorized"
        await self._send(self._event("Ended", trigger, tx=tx, stopped_reason=reason))
        await self.status("Available")
