"""Walk-in sessions: a driver starts a transaction at the charger (RFID card, no
reservation, no ``chegada`` of ours).

The broker's core knows one way for a session to begin: a vehicle's ``chegada``.
So the gateway says it for the driver: it connects to the broker's vehicle port
as the idTag's account and sends ``chegada`` for the charger's point
(``nivel_bateria`` 0, ``nivel_carregar`` 100, ``capacidade_kwh`` the walk-in
capacity, the walk-in payment method). The broker then applies its ordinary
rules (a point whose turn belongs to another reservation refuses) and sends
``start``; the point acknowledges it at once, because the charger has already
started, and the transaction becomes that session. The session is billed to the
idTag's account (``idtag.<tag>``, never a vehicle's id) from the meter, like every
OCPP session; only idTags the operator listed (``[[idtag]]``) may walk in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from common.errors import EVError
from station.ocpp.guard import IdTags
from station.ocpp.point import OcppPoint, Transaction, epoch_or
from vehicle.client import VehicleClient

log = logging.getLogger("station.ocpp")

CHEGADA_TIMEOUT_S: Final = 15.0


@dataclass(frozen=True, slots=True)
class WalkInSettings:
    """How a walk-in reaches the broker and what it asks for."""

    vehicle_port: int  # walk-in sessions arrive at the broker as vehicles
    payment: str
    capacity_kwh: float


class WalkIns:
    def __init__(
        self,
        new_id: Callable[[], int],
        broker: str,
        settings: WalkInSettings,
        id_tags: IdTags | None = None,
    ) -> None:
        self._new_id = new_id
        self._broker = broker
        self._config = settings
        self._tags = id_tags if id_tags is not None else IdTags()

    def authorize(self, point: OcppPoint, id_tag: str) -> str:
        """``Authorize``: Accepted for an idTag the operator authorized (``[[idtag]]``)."""
        return "Accepted" if self._tags.account_for(id_tag) is not None else "Invalid"

    async def start(
        self,
        point: OcppPoint,
        id_tag: str,
        meter_start: int,
        timestamp: str,
        transaction_id: int | str | None = None,
    ) -> tuple[int | str, str]:
        """A transaction the broker did not ask for: (transactionId, idTagInfo status).
        ``transaction_id``: the charger's own (2.0.1); else a new one of ours (1.6)."""
        tx_id = transaction_id if transaction_id is not None else self._new_id()
        # billed to the idTag's own account, never to a vehicle id; unknown tags: Invalid
        vehicle = self._tags.account_for(id_tag)
        if vehicle is None or point.session is not None:
            return tx_id, "Invalid"
        cfg = self._config
        point.expect_walk_in(
            Transaction(
                transaction_id=tx_id,
                session_id="",  # set from the broker's ``start``
                vehicle_id=vehicle,
                nivel_bateria=0.0,
                nivel_carregar=100.0,
                capacidade_kwh=cfg.capacity_kwh,
                meter_start=meter_start,
                started_at=epoch_or(timestamp, 0.0),
                meter_last=meter_start,
            )
        )
        client = VehicleClient(
            self._broker, cfg.vehicle_port, vehicle, timeout=CHEGADA_TIMEOUT_S, reconnect=False
        )
        try:
            await client.connect()
            reply: dict[str, Any] = await client.chegada(
                point.point_id,
                0.0,
                100.0,
                cfg.payment,
                capacidade_kwh=cfg.capacity_kwh,
            )
        except EVError as exc:
            log.warning("%s: walk-in of %s refused: %s", point.point_id, vehicle, exc)
            point.expect_walk_in(None)
            return tx_id, "Invalid"
        finally:
            await client.close()
        if point.session is None or point.session.transaction_id != tx_id:
            log.warning("%s: walk-in of %s got %s but no start", point.point_id, vehicle, reply)
            point.expect_walk_in(None)
            return tx_id, "Invalid"
        log.info("%s: walk-in session %s for %s", point.point_id, reply.get("session_id"), vehicle)
        return tx_id, "Accepted"

    async def close(self) -> None:
        return None
