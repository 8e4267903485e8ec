"""OCPP 1.6J chargers: the ``ocpp`` package's v16 ChargePoint, handlers that hand
validated payloads to the point of the connector they name (:mod:`station.ocpp.mapping`
holds every rule)."""

from __future__ import annotations

import time
from typing import Any

from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import Action, RegistrationStatus

from station.ocpp import mapping
from station.ocpp.logs import warn
from station.ocpp.point import OcppPoint
from station.ocpp.routing import Connectors, now_iso, route_checked


# (ignored below) the ocpp library's ChargePoint is untyped (Any base class)
class Charger16(ChargePoint, Connectors):  # type: ignore[misc]
    """One connected OCPP 1.6J charger and the points of its connectors."""

    version = mapping.VERSION
    dialect = mapping

    def __init__(self, points: list[OcppPoint], gateway: Any, ws: Any, timeout: float) -> None:
        ChargePoint.__init__(self, points[0].spec.charger, ws, response_timeout=timeout)
        Connectors.__init__(self, points)
        self.gateway = gateway
        self.ws = ws

    async def route_message(self, raw_msg: str | bytes) -> None:
        self.heard(time.time())  # every message is a sign of life
        await route_checked(self, raw_msg, "1.6")

    @on(Action.boot_notification)
    def on_boot_notification(self, **_: Any) -> call_result.BootNotification:
        for p in self.points:
            p.on_boot()
        interval = self.gateway.config.heartbeat_interval_s
        return call_result.BootNotification(now_iso(), interval, RegistrationStatus.accepted)

    @after(Action.boot_notification)
    def after_boot_notification(self, **_: Any) -> None:
        self.gateway.spawn(self.gateway.configure(self.point))

    @on(Action.heartbeat)
    def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=now_iso())

    @on(Action.status_notification)
    def on_status_notification(
        self, connector_id: int, status: str, **_: Any
    ) -> call_result.StatusNotification:
        for p in self.points if connector_id == 0 else [self.point_for(connector_id)]:
            if p is not None:
                p.on_status(connector_id, status)
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(
        self, connector_id: int, meter_value: Any, transaction_id: int | None = None, **_: Any
    ) -> call_result.MeterValues:
        p = self.point_of_transaction(transaction_id) or self.point_for(connector_id)
        if p is not None:
            p.on_meter_values(transaction_id, meter_value)
        return call_result.MeterValues()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **_: Any) -> call_result.Authorize:
        status = self.gateway.walk_ins.authorize(self.point, id_tag)
        return call_result.Authorize(id_tag_info={"status": status})

    @on(Action.start_transaction)
    async def on_start_transaction(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any
    ) -> call_result.StartTransaction:
        p = self.point_for(connector_id)
        if p is None:  # a connector the file does not list: not a point of ours
            invalid = {"status": "Invalid"}
            return call_result.StartTransaction(self.gateway.new_id(), id_tag_info=invalid)
        ours = p.on_start_transaction(id_tag, meter_start, timestamp, time.time())
        status = "Accepted"
        if ours is None:
            ours, status = await self.gateway.walk_ins.start(p, id_tag, meter_start, timestamp)
        return call_result.StartTransaction(transaction_id=ours, id_tag_info={"status": status})

    @on(Action.stop_transaction)
    async def on_stop_transaction(
        self,
        meter_stop: int,
        timestamp: str,
        transaction_id: int,
        reason: str | None = None,
        id_tag: str | None = None,
        **_: Any,
    ) -> call_result.StopTransaction:
        p = self.point_of_transaction(transaction_id)
        if p is None or not p.on_stop_transaction(
            transaction_id, meter_stop, timestamp, reason, time.time()
        ):
            cid = self.id
            warn(cid, "stop", "%s: StopTransaction for unknown transaction %s accepted and ignored",
                 cid, transaction_id)  # fmt: skip
        await self.gateway.durable()  # answered once the completion survives a crash
        info = {"status": "Accepted"} if id_tag is not None else None
        return call_result.StopTransaction(id_tag_info=info)

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status(self, **_: Any) -> call_result.DiagnosticsStatusNotification:
        return call_result.DiagnosticsStatusNotification()
