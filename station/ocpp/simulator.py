"""A simulated OCPP 1.6J charger, built on the ``ocpp`` package's own ChargePoint class.

Used by the tests (the way the OCPP community tests central systems) and by the
compose stack's ``ocpp-chargers`` service (``ev-station ocpp-charger``). It does
what a real single-connector charger does, in fast motion:

* connects to ``<url>/<id>`` with subprotocol ``ocpp1.6`` and HTTP Basic auth;
  ``BootNotification``, ``StatusNotification`` (Available), then ``Heartbeat`` at the
  interval the central system gave; reconnects with back-off when the link drops
  (transaction messages are kept and sent once connected again, as OCPP requires);
* ``ReserveNow`` / ``CancelReservation`` -> Reserved / Available (``reserve_answer``
  makes a free charger answer Rejected, Faulted or Unavailable instead);
* ``ChangeConfiguration`` -> Accepted (kept in ``configuration``); ``ChangeAvailability``
  -> Accepted and StatusNotification Unavailable / Available;
* ``RemoteStartTransaction`` -> Accepted (or Rejected in ``reject_starts`` mode),
  then ``StartTransaction``, Charging, ``MeterValues`` every ``meter_every_s`` with the
  energy register growing at ``power_kw`` x ``speed``;
* ``RemoteStopTransaction`` -> Accepted, ``StopTransaction`` (reason Remote), Available;
* :meth:`SimCharger.local_start` is a driver's RFID card: ``Authorize`` then
  ``StartTransaction`` with no reservation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from common.timeutil import format_timestamp

log = logging.getLogger("station.ocpp.sim")

BACKOFF_MAX_S: Final = 2.0


def _now() -> str:
    return format_timestamp(time.time())


@dataclass
class SimOptions:
    power_kw: float = 22.0
    speed: float = 60.0  # simulated seconds per real second
    meter_every_s: float = 0.5
    reject_starts: bool = False
    reject_profiles: bool = False  # answer SetChargingProfile NotSupported
    reconnect: bool = True
    connector: int = 1
    reserve_answer: str = "Accepted"  # what ReserveNow answers when free (Rejected, Faulted...)


# (ignored below) the ocpp library's ChargePoint is untyped (Any base class)
class _Protocol(ChargePoint):  # type: ignore[misc]
    """The ``ocpp`` ChargePoint of one connection; handlers forward to the SimCharger."""

    def __init__(self, sim: SimCharger, ws: ClientConnection) -> None:
        super().__init__(sim.charger_id, ws, response_timeout=10)
        self.sim = sim

    @on(Action.set_charging_profile)
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any
    ) -> call_result.SetChargingProfile:
        self.sim.received.append(("SetChargingProfile", cs_charging_profiles))
        if self.sim.options.reject_profiles:
            return call_result.SetChargingProfile(status="NotSupported")
        schedule = cs_charging_profiles.get("charging_schedule") or {}
        periods = schedule.get("charging_schedule_period") or []
        if schedule.get("charging_rate_unit") == "W" and periods:
            self.sim.limit_w = float(periods[0]["limit"])
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.reserve_now)
    def on_reserve_now(self, reservation_id: int, **_: Any) -> call_result.ReserveNow:
        self.sim.received.append(("ReserveNow", reservation_id))
        if self.sim.transaction is not None:
            return call_result.ReserveNow(status="Occupied")
        if self.sim.options.reserve_answer != "Accepted":
            return call_result.ReserveNow(status=self.sim.options.reserve_answer)
        self.sim.reservation = reservation_id
        return call_result.ReserveNow(status="Accepted")

    @after(Action.reserve_now)
    async def after_reserve_now(self, **_: Any) -> None:
        if self.sim.reservation is not None and self.sim.transaction is None:
            await self.sim.status("Reserved")

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str) -> call_result.ChangeConfiguration:
        self.sim.received.append(("ChangeConfiguration", (key, value)))
        self.sim.configuration[key] = value
        return call_result.ChangeConfiguration(status="Accepted")

    @on(Action.change_availability)
    def on_change_availability(
        self, connector_id: int, type: str
    ) -> call_result.ChangeAvailability:
        self.sim.received.append(("ChangeAvailability", type))
        return call_result.ChangeAvailability(status="Accepted")

    @after(Action.change_availability)
    async def after_change_availability(self, type: str, **_: Any) -> None:
        await self.sim.status("Unavailable" if type == "Inoperative" else "Available")

    @on(Action.cancel_reservation)
    def on_cancel_reservation(self, reservation_id: int, **_: Any) -> call_result.CancelReservation:
        self.sim.received.append(("CancelReservation", reservation_id))
        if self.sim.reservation != reservation_id:
            return call_result.CancelReservation(status="Rejected")
        self.sim.reservation = None
        return call_result.CancelReservation(status="Accepted")

    @after(Action.cancel_reservation)
    async def after_cancel_reservation(self, **_: Any) -> None:
        if self.sim.reservation is None and self.sim.transaction is None:
            await self.sim.status("Available")

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag: str, **_: Any) -> call_result.RemoteStartTransaction:
        self.sim.received.append(("RemoteStartTransaction", id_tag))
        if self.sim.options.reject_starts or self.sim.transaction is not None:
            return call_result.RemoteStartTransaction(status="Rejected")
        return call_result.RemoteStartTransaction(status="Accepted")

    @after(Action.remote_start_transaction)
    async def after_remote_start(self, id_tag: str, **_: Any) -> None:
        if not self.sim.options.reject_starts and self.sim.transaction is None:
            await self.sim.begin(id_tag)

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id: int, **_: Any) -> call_result.RemoteStopTransaction:
        self.sim.received.append(("RemoteStopTransaction", transaction_id))
        if self.sim.transaction != transaction_id:
            return call_result.RemoteStopTransaction(status="Rejected")
        return call_result.RemoteStopTransaction(status="Accepted")

    @after(Action.remote_stop_transaction)
    async def after_remote_stop(self, transaction_id: int, **_: Any) -> None:
        if self.sim.transaction == transaction_id:
            await self.sim.end("Remote")


@dataclass
class SimCharger:
    """One simulated charger; :meth:`run` connects and keeps it connected."""

    url: str  # ws://host:port/ocpp  (the id is appended)
    charger_id: str
    password: str
    options: SimOptions = field(default_factory=SimOptions)
    ssl: Any = None
    meter_wh: float = 0.0
    limit_w: float | None = None  # the last TxProfile's limit (SetChargingProfile, W)
    transaction: int | None = None
    reservation: int | None = None
    heartbeat_s: float = 60.0
    received: list[tuple[str, Any]] = field(default_factory=list)
    configuration: dict[str, str] = field(default_factory=dict)
    completed: list[dict[str, Any]] = field(default_factory=list)
    booted: asyncio.Event = field(default_factory=asyncio.Event)
    charging: asyncio.Event = field(default_factory=asyncio.Event)
    connects: int = 0
    _cp: _Protocol | None = None
    _backlog: list[Any] = field(default_factory=list)  # transaction messages not yet sent
    _meter_task: asyncio.Task[None] | None = None
    _stop: bool = False

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
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _session(self) -> None:
        auth = base64.b64encode(f"{self.charger_id}:{self.password}".encode()).decode()
        async with connect(
            f"{self.url}/{self.charger_id}",
            # (ignored below) websockets types subprotocols as Subprotocol (a NewType of str)
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Basic {auth}"},
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
                            charge_point_model="SimCharger", charge_point_vendor="evcharge"
                        )
                    )
                    self.heartbeat_s = float(conf.interval) or 60.0
                    self.booted.set()
                state = "Charging" if self.transaction is not None else "Available"
                await self.status(state)
                while self._backlog:
                    await cp.call(self._backlog[0])
                    self._backlog.pop(0)
                while True:  # heartbeats until the connection ends
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

    async def drop(self) -> None:
        """Cut the connection (the charger keeps running and reconnects)."""
        cp = self._cp
        if cp is not None:
            await cp._connection.close()

    async def status(self, state: str) -> None:
        cp = self._cp
        if cp is not None:
            await cp.call(
                call.StatusNotification(
                    connector_id=self.options.connector,
                    error_code="NoError",
                    status=state,
                    timestamp=_now(),
                )
            )

    async def _transaction_call(self, payload: Any) -> Any:
        """A transaction message: sent now, or kept until the charger is connected again."""
        cp = self._cp
        if cp is None:
            self._backlog.append(payload)
            return None
        try:
            return await cp.call(payload)
        except (ConnectionClosed, TimeoutError):
            self._backlog.append(payload)
            return None

    async def local_start(self, id_tag: str) -> str:
        """A driver's card: Authorize, then StartTransaction; the idTagInfo status."""
        cp = self._cp
        assert cp is not None, "not connected"
        conf = await cp.call(call.Authorize(id_tag=id_tag))
        if conf.id_tag_info["status"] != "Accepted":
            return str(conf.id_tag_info["status"])
        return await self.begin(id_tag)

    async def begin(self, id_tag: str) -> str:
        cp = self._cp
        assert cp is not None, "not connected"
        self.limit_w = None  # a new transaction: no profile yet
        await self.status("Preparing")
        conf = await cp.call(
            call.StartTransaction(
                connector_id=self.options.connector,
                id_tag=id_tag,
                meter_start=round(self.meter_wh),
                timestamp=_now(),
                reservation_id=self.reservation,
            )
        )
        status = str(conf.id_tag_info["status"])
        self.transaction = conf.transaction_id
        self.reservation = None
        if status != "Accepted":  # StopTransactionOnInvalidId
            await self.end("DeAuthorized")
            return status
        await self.status("Charging")
        self.charging.set()
        self._meter_task = asyncio.create_task(self._meter(conf.transaction_id))
        return status

    async def _meter(self, transaction_id: int) -> None:
        opts = self.options
        last = time.monotonic()
        while self.transaction == transaction_id:
            await asyncio.sleep(opts.meter_every_s)
            now = time.monotonic()
            power_w = opts.power_kw * 1000.0
            if self.limit_w is not None:
                power_w = min(power_w, self.limit_w)  # the charger obeys its profile
            self.meter_wh += power_w / 3600.0 * (now - last) * opts.speed
            last = now
            if self._cp is not None and self.transaction == transaction_id:
                with contextlib.suppress(ConnectionClosed, TimeoutError):
                    await self._cp.call(
                        call.MeterValues(
                            connector_id=opts.connector,
                            transaction_id=transaction_id,
                            meter_value=[
                                {
                                    "timestamp": _now(),
                                    "sampledValue": [
                                        {
                                            "value": str(round(self.meter_wh)),
                                            "measurand": "Energy.Active.Import.Register",
                                            "unit": "Wh",
                                        },
                                        {
                                            "value": str(round(power_w)),
                                            "measurand": "Power.Active.Import",
                                            "unit": "W",
                                        },
                                    ],
                                }
                            ],
                        )
                    )

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
        await self._transaction_call(
            call.StopTransaction(
                meter_stop=meter_stop, timestamp=_now(), transaction_id=tx, reason=reason
            )
        )
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            await self.status("Finishing")
            await self.status("Available")
