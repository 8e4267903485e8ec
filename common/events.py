"""The ``data`` of every bus topic, one struct per topic, defined once.

The broker core builds these structs and publishes them as the ``data`` map of
a :class:`common.messages.BusEvent` (field order is the wire order). Consumers
(the billing ledger, the monitor, the tail) turn a received event back into
its struct with :func:`event_data` instead of re-validating keys by hand.
Unknown fields are ignored, so a newer broker can add fields; a topic this
module does not know decodes to ``None`` (subscribers skip it).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, TypeVar

import msgspec
from msgspec import UNSET, Struct, UnsetType

from common.errors import BusProtocolError
from common.messages import BusEvent

T = TypeVar("T", bound="EventData")


class EventData(Struct, kw_only=True, frozen=True):
    """Base of every topic's data; ``TOPIC`` is the bus topic it travels on."""

    TOPIC: ClassVar[str] = ""


class BrokerStarted(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "broker.started"
    points: int
    reservations: int


class PointRegistered(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "point.registered"
    point_id: str
    latitude: float
    longitude: float
    potencia_kw: float
    preco_kwh: float


class PointStatus(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "point.status"
    point_id: str
    estado: str
    available: bool
    queue_size: int


class PointAvailability(EventData, kw_only=True, frozen=True):
    """An operator took the point out of service (``available`` false) or put it back."""

    TOPIC: ClassVar[str] = "point.availability"
    point_id: str
    available: bool
    reason: str
    by: str


class PointOnline(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "point.online"
    point_id: str


class PointOffline(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "point.offline"
    point_id: str
    last_heard: str


class ReservationCreated(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "reservation.created"
    reservation_id: str
    vehicle_id: str
    point_id: str
    posicao: int
    tempo_estimado: float


class ReservationTurn(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "reservation.turn"
    reservation_id: str
    vehicle_id: str
    point_id: str
    expira_em: str
    deadline: float


class ReservationCancelled(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "reservation.cancelled"
    reservation_id: str
    vehicle_id: str
    point_id: str
    motivo: str


class ReservationExpired(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "reservation.expired"
    reservation_id: str
    vehicle_id: str
    point_id: str


class ChargingStarted(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "charging.started"
    session_id: str
    vehicle_id: str
    point_id: str
    reservation_id: str | None
    started_at: str
    price_kwh: float
    payment_method: str
    nivel_bateria: float
    nivel_carregar: float
    capacidade_kwh: float


class ChargingCompleted(EventData, kw_only=True, frozen=True):
    """Everything a bill needs."""

    TOPIC: ClassVar[str] = "charging.completed"
    session_id: str
    vehicle_id: str
    point_id: str
    started_at: str | float  # ISO 8601 from this broker; epoch seconds accepted
    ended_at: str | float
    energy_kwh: float
    price_kwh: float
    cost: float
    currency: str = "BRL"
    payment_method: str = ""
    reason: str = ""
    #: the OCPI CDR (docs/tariffs.md) of a session priced by a tariff; absent otherwise
    cdr: dict[str, Any] | UnsetType = UNSET


class TariffUpdated(EventData, kw_only=True, frozen=True):
    """An operator set, assigned or removed a tariff (docs/tariffs.md).

    ``action`` ``set``: ``tariff`` is the OCPI Tariff object; ``assign``: ``points``
    is the pattern of point ids it now prices; ``remove``: the tariff is gone."""

    TOPIC: ClassVar[str] = "tariff.updated"
    tariff_id: str
    action: str
    by: str = ""
    tariff: dict[str, Any] | None = None
    points: str | None = None


class VehicleConnected(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "vehicle.connected"
    vehicle_id: str


class VehicleDisconnected(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "vehicle.disconnected"
    vehicle_id: str


class VehicleLowBattery(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "vehicle.low_battery"
    vehicle_id: str
    nivel_bateria: float
    latitude: float
    longitude: float


class SiteUpdated(EventData, kw_only=True, frozen=True):
    """An operator defined, changed (``removed`` false) or removed a site."""

    TOPIC: ClassVar[str] = "site.updated"
    site: str
    limit_kw: float
    min_kw: float
    points: list[str]
    removed: bool = False
    by: str = ""


class SiteAllocation(EventData, kw_only=True, frozen=True):
    """The power each session of a site may draw (on every change)."""

    TOPIC: ClassVar[str] = "site.allocation"
    site: str
    limit_kw: float
    allocated_kw: float
    sessions: list[dict[str, Any]]  # [{session_id, point_id, kw}]


class SiteOverdraw(EventData, kw_only=True, frozen=True):
    """A session drew more than its limit in 3 reports running: held at 0 kW."""

    TOPIC: ClassVar[str] = "site.overdraw"
    site: str
    session_id: str
    point_id: str
    limit_kw: float
    drawn_kw: float


class ChargingPaused(EventData, kw_only=True, frozen=True):
    """A session waits for power on its site (``aguardando_energia``)."""

    TOPIC: ClassVar[str] = "charging.paused"
    session_id: str
    vehicle_id: str
    point_id: str
    site: str


class ChargingResumed(EventData, kw_only=True, frozen=True):
    TOPIC: ClassVar[str] = "charging.resumed"
    session_id: str
    vehicle_id: str
    point_id: str
    site: str
    kw: float


EVENT_TYPES: Final[dict[str, type[EventData]]] = {
    cls.TOPIC: cls
    for cls in (
        BrokerStarted,
        PointRegistered,
        PointStatus,
        PointAvailability,
        PointOnline,
        PointOffline,
        ReservationCreated,
        ReservationTurn,
        ReservationCancelled,
        ReservationExpired,
        ChargingStarted,
        ChargingCompleted,
        TariffUpdated,
        VehicleConnected,
        VehicleDisconnected,
        VehicleLowBattery,
        SiteUpdated,
        SiteAllocation,
        SiteOverdraw,
        ChargingPaused,
        ChargingResumed,
    )
}


def event_fields(data: EventData) -> dict[str, Any]:
    """The wire map of ``data`` (what travels as ``BusEvent.data``)."""
    fields: dict[str, Any] = msgspec.structs.asdict(data)
    if fields.get("cdr") is UNSET:  # an untariffed bill: as it always was
        del fields["cdr"]
    return fields


def event_data(event: BusEvent) -> EventData | None:
    """The typed data of ``event``; None for a topic this version does not know.

    Raises :class:`common.errors.BusProtocolError` naming the field when the
    data does not match its topic's struct.
    """
    cls = EVENT_TYPES.get(event.topic)
    if cls is None:
        return None
    return decode_data(cls, event.data)


def decode_data(cls: type[T], data: Any) -> T:
    """``data`` (a map) as ``cls``; numbers sent as text are accepted.

    Raises :class:`common.errors.BusProtocolError` naming the field.
    """
    try:
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise BusProtocolError(f"invalid {cls.TOPIC} data: {exc}") from None
