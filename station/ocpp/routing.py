"""What both OCPP versions' connections share: frame checks before the ``ocpp`` package
routes a message, and the clock as OCPP writes it."""

from __future__ import annotations

import time
from typing import Any

import ocpp.messages
from ocpp.exceptions import OCPPError

from common.timeutil import format_timestamp
from station.ocpp import frames
from station.ocpp.logs import warn


def now_iso() -> str:
    return format_timestamp(time.time())


async def route_checked(cp: Any, raw: str | bytes, version: frames.Version) -> None:
    """The ``ocpp`` package's routing, with every invalid frame answered as OCPP-J asks
    (:mod:`station.ocpp.frames`) and one throttled log line instead of a traceback."""
    charger = cp.id
    bad = frames.check(raw, version)
    if bad is not None:
        warn(charger, "frame", "%s: invalid frame (%s): %.80r", charger, bad.reason, raw)
        if bad.unique_id is None:
            await cp._connection.close(frames.CLOSE_PROTOCOL_ERROR, bad.reason[:120])
        else:
            await cp._send(bad.call_error())
        return
    msg = ocpp.messages.unpack(raw)
    if msg.message_type_id != frames.CALL:
        cp._response_queue.put_nowait(msg)
        return
    try:
        await cp._handle_call(msg)
    except OCPPError as error:
        warn(charger, "frame", "%s: %s refused: %s", charger, msg.action, error)
        answer = msg.create_call_error(error)
        answer.error_code = frames.error_code(answer.error_code, version)
        await cp._send(answer.to_json())


class Connectors:
    """The points one charger connection carries, by connector (1.6) or EVSE (2.0.1)."""

    def __init__(self, points: list[Any]) -> None:
        self.points = points
        self.point = points[0]  # the charger's first point (boot, authorize, configure)
        self._by_connector = {p.spec.connector: p for p in points}

    def point_for(self, connector: int | None) -> Any:
        """The point of ``connector``; None for a connector the file does not list."""
        if connector is None:
            return self.point if len(self.points) == 1 else None
        return self._by_connector.get(connector)

    def point_of_transaction(self, transaction_id: int | str | None) -> Any:
        for p in self.points:
            if p.session is not None and p.session.transaction_id == transaction_id:
                return p
        return None

    def heard(self, now: float) -> None:
        for p in self.points:
            p.heard(now)
