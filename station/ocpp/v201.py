"""OCPP 2.0.1 chargers: the ``ocpp`` package's v201 ChargePoint, handlers that hand
validated payloads to the charger's :class:`~station.ocpp.point.OcppPoint`.

Every rule is a function of :mod:`station.ocpp.mapping201` (or, where the two
versions agree, :mod:`station.ocpp.mapping`); the transaction rules of 2.0.1 (one
``TransactionEvent`` for start, updates and end, numbered by ``seqNo``, replayed
with ``offline`` after a reconnection) are :func:`transaction_event`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ocpp.routing import after, on
from ocpp.v201 import ChargePoint, call_result
from ocpp.v201.enums import Action

from station.ocpp import mapping201
from station.ocpp.logs import warn
from station.ocpp.point import OcppPoint
from station.ocpp.routing import Connectors, now_iso, route_checked

log = logging.getLogger("station.ocpp")

ACCEPTED = {"status": "Accepted"}


# (ignored below) the ocpp library's ChargePoint is untyped (Any base class)
class Charger201(ChargePoint, Connectors):  # type: ignore[misc]
    """One connected OCPP 2.0.1 charger and the points of its EVSEs."""

    version = mapping201.VERSION
    dialect = mapping201

    def __init__(self, points: list[OcppPoint], gateway: Any, ws: Any, timeout: float) -> None:
        ChargePoint.__init__(self, points[0].spec.charger, ws, response_timeout=timeout)
        Connectors.__init__(self, points)
        self.gateway = gateway
        self.ws = ws
        self._first = True

    async def route_message(self, raw_msg: str | bytes) -> None:
        self.heard(time.time())  # every message is a sign of life
        first, self._first = self._first, False
        await route_checked(self, raw_msg, "2.0.1")
        if first and '"BootNotification"' not in str(raw_msg)[:64]:
            # connected again without a boot: what do its EVSEs say now?
            for p in self.points:
                self.gateway.spawn(self._trigger(p))

    async def _trigger(self, p: OcppPoint) -> None:
        await self.gateway.call(p, mapping201.trigger_status(p.spec.connector))

    @on(Action.boot_notification)
    def on_boot_notification(self, **_: Any) -> call_result.BootNotification:
        for p in self.points:
            p.on_boot()
        interval = self.gateway.config.heartbeat_interval_s
        return call_result.BootNotification(now_iso(), interval, "Accepted")

    @after(Action.boot_notification)
    def after_boot_notification(self, **_: Any) -> None:
        self.gateway.spawn(self.gateway.configure(self.point))

    @on(Action.heartbeat)
    def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=now_iso())

    @on(Action.status_notification)
    def on_status_notification(
        self, evse_id: int, connector_status: str, **_: Any
    ) -> call_result.StatusNotification:
        p = self.point_for(evse_id)
        if p is not None:
            p.on_status(evse_id, mapping201.status_as_16(connector_status))
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(self, evse_id: int, meter_value: Any, **_: Any) -> call_result.MeterValues:
        p = self.point_for(evse_id)
        if p is not None:
            p.on_meter_values(None, meter_value)
        return call_result.MeterValues()

    @on(Action.authorize)
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> call_result.Authorize:
        status = self.gateway.walk_ins.authorize(self.point, str(id_token.get("id_token")))
        return call_result.Authorize(id_token_info={"status": status})

    @on(Action.transaction_event)
    async def on_transaction_event(self, **event: Any) -> call_result.TransactionEvent:
        return call_result.TransactionEvent(**await transaction_event(self, event))

    @on(Action.security_event_notification)
    def on_security_event(self, type: str, **_: Any) -> call_result.SecurityEventNotification:
        warn(self.id, "security", "%s: security event %s", self.id, type)
        return call_result.SecurityEventNotification()

    @on(Action.notify_report)
    def on_notify_report(self, **_: Any) -> call_result.NotifyReport:
        return call_result.NotifyReport()

    @on(Action.notify_event)
    def on_notify_event(self, **_: Any) -> call_result.NotifyEvent:
        return call_result.NotifyEvent()

    @on(Action.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()

    @on(Action.log_status_notification)
    def on_log_status(self, **_: Any) -> call_result.LogStatusNotification:
        return call_result.LogStatusNotification()

    @on(Action.reservation_status_update)
    def on_reservation_status(self, **_: Any) -> call_result.ReservationStatusUpdate:
        return call_result.ReservationStatusUpdate()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status="UnknownVendorId")


async def transaction_event(conn: Charger201, event: dict[str, Any]) -> dict[str, Any]:
    """Start, update or end of a transaction (docs/ocpp.md, "TransactionEvent"); the
    answer's fields. Events are applied once, in ``seqNo`` order per transaction: a
    repeat (a replay after a lost answer) changes nothing and is answered again."""
    gw, now = conn.gateway, time.time()
    kind = event.get("event_type")
    info = event.get("transaction_info") or {}
    tx_id = str(info.get("transaction_id"))
    point = conn.point_of_transaction(tx_id) or conn.point_for((event.get("evse") or {}).get("id"))
    if point is None:  # an EVSE the file does not list, or a transaction not ours
        if kind == "Ended":
            await gw.durable()
        return {"id_token_info": {"status": "Invalid"}} if kind == "Started" else {}
    seq = event.get("seq_no", 0)
    stamp = str(event.get("timestamp") or now_iso())
    wh, soc = mapping201.meter_reading(event.get("meter_value"))
    tag = (event.get("id_token") or {}).get("id_token")
    tx = point.session
    ours = tx is not None and tx.transaction_id == tx_id
    if ours and tx is not None:
        if seq <= tx.seq:
            return {}  # a repeat: applied before
        tx.seq = seq
    elif kind != "Started" or tag is None:
        if kind == "Ended":
            await gw.durable()  # a repeat of an end already answered, or not ours
        return {}
    if kind == "Started" and not ours:
        started = point.on_start_transaction(
            str(tag), wh if wh is not None else -1, stamp, now, tx_id
        )
        if started is None:
            _, status = await gw.walk_ins.start(
                point, str(tag), wh if wh is not None else -1, stamp, tx_id
            )
            if point.session is not None and point.session.transaction_id == tx_id:
                point.session.seq = seq
            return {"id_token_info": {"status": status}}
        if point.session is not None:
            point.session.seq = seq
        return {"id_token_info": ACCEPTED}
    tx = point.session
    if tx is None:
        return {}
    if kind == "Ended":
        reason = mapping201.stop_reason_as_16(info.get("stopped_reason"))
        point.on_stop_transaction(tx_id, wh, stamp, reason, now)
        await gw.durable()  # answered once the completion survives a crash
        return {}
    point.on_reading(tx, wh, soc)
    point.check_target(tx)
    return {}
