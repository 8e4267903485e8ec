"""Message schemas, defined once for every side of the system.

Vehicle requests (TCP JSON) are decoded in two steps: the :class:`Envelope`
(``type``, raw ``data``, optional ``id``) and then the ``data`` into the
struct registered for that ``type`` in :data:`REQUEST_TYPES`. Unknown fields
are ignored everywhere (forward compatibility). Validation errors become
:class:`common.errors.InvalidRequest` naming the field (see
:func:`common.codec.decode_request`).

Station datagrams (UDP JSON), station commands (ZeroMQ msgpack) and bus events
are described here too, so there is one place to read the wire shapes.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

# --- shared field types -------------------------------------------------------------

VEHICLE_ID_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,64}$"
VehicleId = Annotated[str, Meta(pattern=VEHICLE_ID_PATTERN)]
#: the vehicle id under which a charger's walk-in (local start) is billed: this prefix
#: and the authorized idTag (docs/ocpp.md); never registrable as a driver's own id
WALK_IN_PREFIX: Final = "idtag."
PointId = Annotated[str, Meta(min_length=1, max_length=64)]
Latitude = Annotated[float, Meta(ge=-90.0, le=90.0)]
Longitude = Annotated[float, Meta(ge=-180.0, le=180.0)]
Percent = Annotated[float, Meta(ge=0.0, le=100.0)]
Scalar = str | int | float | bool | None

PAYMENT_METHODS: Final = ("Pix", "Débito em conta", "Cartão de crédito")
PaymentMethod = Literal["Pix", "Débito em conta", "Cartão de crédito"]

DEFAULT_LIMIT: Final = 10
MAX_LIMIT: Final = 100
DEFAULT_CAPACITY_KWH: Final = 60.0
MAX_REQUEST_BYTES: Final = 64 * 1024
MAX_DATAGRAM_BYTES: Final = 8 * 1024
MAX_STATION_FRAME: Final = 64 * 1024  # one ZeroMQ frame between a station and the broker
#: Bounds of what a station may report (security contract): anything else is dropped.
MAX_CAPACITY_KWH: Final = 1000.0
PowerKw = Annotated[float, Meta(gt=0.0, le=1000.0)]
PriceKwh = Annotated[float, Meta(ge=0.0, le=100.0)]
EnergyKwh = Annotated[float, Meta(ge=0.0, le=MAX_CAPACITY_KWH)]
IntervalS = Annotated[float, Meta(gt=0.0, le=3600.0)]
#: What a station draws now, or the most it may draw (energy.md): 0 pauses.
DrawnKw = Annotated[float, Meta(ge=0.0, le=1000.0)]
EpochOrText = Annotated[float, Meta(ge=0.0, le=1e11)] | str


class Location(Struct, frozen=True):
    latitude: Latitude
    longitude: Longitude


class Envelope(Struct):
    """``{"type": T, "data": {...}, "id": X}``; ``data`` is decoded later by type."""

    type: str
    data: Raw = Raw(b"{}")
    id: UnsetType | Scalar = UNSET


# --- vehicle requests (``data`` of each request type) ------------------------------


Ordenar = Literal["distancia", "custo"]


class Bateria(Struct, kw_only=True, frozen=True):
    id_veiculo: VehicleId | None = None
    nivel_bateria: Percent
    localizacao: Location
    timestamp: str | None = None
    distancia_max: Annotated[float, Meta(ge=0.0)] | None = None
    limite: Annotated[int, Meta(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT
    #: with both, each point gets ``custo_estimado`` (docs/tariffs.md)
    capacidade_kwh: Annotated[float, Meta(gt=0.0, le=1000.0)] | None = None
    nivel_carregar: Percent | None = None
    ordenar: Ordenar = "distancia"


class Consulta(Struct, kw_only=True, frozen=True):
    id_veiculo: VehicleId | None = None
    localizacao: Location
    timestamp: str | None = None
    distancia_max: Annotated[float, Meta(ge=0.0)] | None = None
    limite: Annotated[int, Meta(ge=1, le=MAX_LIMIT)] | None = None
    #: with all three, each point gets ``custo_estimado`` (docs/tariffs.md)
    nivel_bateria: Percent | None = None
    capacidade_kwh: Annotated[float, Meta(gt=0.0, le=1000.0)] | None = None
    nivel_carregar: Percent | None = None
    ordenar: Ordenar = "distancia"


class Reserva(Struct, kw_only=True, frozen=True):
    id_veiculo: VehicleId | None = None
    id_ponto_recarga: PointId
    tempo_estimado: Annotated[float, Meta(ge=0.0, le=240.0)] = 0.0
    timestamp: str | None = None


class Cancelar(Struct, kw_only=True, frozen=True):
    id_veiculo: VehicleId | None = None
    id_ponto_recarga: PointId
    timestamp: str | None = None


class Chegada(Struct, kw_only=True, frozen=True):
    id_veiculo: VehicleId | None = None
    id_ponto_recarga: PointId
    nivel_bateria: Percent
    nivel_carregar: Percent
    metodo_pagamento: PaymentMethod
    capacidade_kwh: Annotated[float, Meta(gt=0.0, le=1000.0)] = DEFAULT_CAPACITY_KWH
    timestamp: str | None = None


class Parar(Struct, kw_only=True, frozen=True):
    id_veiculo: VehicleId | None = None
    id_ponto_recarga: PointId
    timestamp: str | None = None


class Custos(Struct, kw_only=True, frozen=True):
    id_veiculo: VehicleId | None = None
    timestamp: str | None = None


class StatusQuery(Struct, kw_only=True, frozen=True):
    id_veiculo: VehicleId | None = None
    timestamp: str | None = None


class Ping(Struct, kw_only=True, frozen=True):
    id_veiculo: VehicleId | None = None


#: A token is 43 characters (base64url of 32 bytes); longer input is refused at once.
MAX_TOKEN_CHARS: Final = 128


class Registrar(Struct, kw_only=True, frozen=True):
    id_veiculo: VehicleId


class Autenticar(Struct, kw_only=True, frozen=True):
    id_veiculo: VehicleId
    token: Annotated[str, Meta(min_length=1, max_length=MAX_TOKEN_CHARS)]


VehicleRequestData = (
    Bateria
    | Consulta
    | Reserva
    | Cancelar
    | Chegada
    | Parar
    | Custos
    | StatusQuery
    | Ping
    | Registrar
    | Autenticar
)

REQUEST_TYPES: Final[dict[str, type[Any]]] = {
    "bateria": Bateria,
    "consulta": Consulta,
    "reserva": Reserva,
    "cancelar": Cancelar,
    "chegada": Chegada,
    "parar": Parar,
    "custos": Custos,
    "status": StatusQuery,
    "ping": Ping,
    "registrar": Registrar,
    "autenticar": Autenticar,
}

# reply ``type`` for each request ``type``
REPLY_TYPES: Final[dict[str, str]] = {
    "bateria": "pontos_disponiveis",
    "consulta": "lista_pontos",
    "reserva": "reserva_response",
    "cancelar": "cancelar_response",
    "chegada": "chegada_response",
    "parar": "parar_response",
    "custos": "extrato",
    "status": "status_veiculo",
    "ping": "pong",
    "registrar": "registro",
    "autenticar": "autenticado",
}

PUSH_TYPES: Final = (
    "sua_vez",
    "reserva_expirada",
    "reserva_cancelada",
    "custo_final",
    "encerramento",
)


class VehicleRequest(Struct, frozen=True):
    """A decoded, validated vehicle request: its type, typed data and optional id."""

    type: str
    data: VehicleRequestData
    id: UnsetType | Scalar = UNSET


# --- station status datagrams (UDP JSON) ----------------------------------------------

StationState = Literal["disponivel", "carregando", "indisponivel"]


class StatusDatagram(Struct, kw_only=True, frozen=True):
    """The original minimal form plus our stations' extended fields (all optional)."""

    id: PointId
    latitude: Latitude
    longitude: Longitude
    available: bool = True
    queue_size: int | None = None
    vehicle_id: str | None = None
    battery: Percent | None = None
    estado: StationState | None = None
    potencia_kw: PowerKw | None = None
    preco_kwh: PriceKwh | None = None
    session_id: str | None = None
    energia_kwh: EnergyKwh | None = None
    boot_id: str | None = None
    seq: int | None = None
    interval_s: IntervalS | None = None
    ts: float | str | None = None
    #: false while a vehicle is still plugged in after charging (parking time);
    #: absent from stations that do not tell (the connector counts as free)
    conector_livre: bool | None = None
    potencia_atual_kw: DrawnKw | None = None  # what the session draws now (energy.md)


# --- station <-> broker over ZeroMQ (msgpack maps with a ``type`` key) ------------------


class Hello(Struct, tag="hello", tag_field="type", kw_only=True, frozen=True):
    id: PointId
    latitude: Latitude
    longitude: Longitude
    potencia_kw: PowerKw = 50.0
    preco_kwh: PriceKwh = 2.0
    boot_id: str = ""
    interval_s: IntervalS = 2.0
    # the station's ack of ``hold`` decides the reservation: the ``reserva`` reply waits
    # for it (a gateway whose chargers may refuse to hold, docs/protocol.md)
    confirms_holds: bool = False
    # tell the station when an operator takes its point out of service (``availability``)
    availability: bool = False
    limites: bool = False  # the station obeys ``limit`` commands (energy.md)


#: The point a message is about, on a connection that carries several points (or whose
#: routing id is not the point id): docs/station.md "Routing". Omitted on the wire when unset.
RoutedPoint = PointId | UnsetType


class Heartbeat(Struct, tag="heartbeat", tag_field="type", kw_only=True, frozen=True):
    id: RoutedPoint = UNSET


class Ack(Struct, tag="ack", tag_field="type", kw_only=True, frozen=True):
    cmd_id: str
    ok: bool
    error: str | None = None
    id: RoutedPoint = UNSET


class SessionComplete(Struct, tag="session_complete", tag_field="type", kw_only=True, frozen=True):
    session_id: str
    vehicle_id: str
    energia_kwh: EnergyKwh
    nivel_inicial: Percent
    nivel_final: Percent
    started_at: EpochOrText
    ended_at: EpochOrText
    reason: Literal["target_reached", "stopped", "fault"] = "target_reached"
    # energy read from the charger's meter (OCPP gateway): billed instead of the levels
    energia_medida_kwh: EnergyKwh | None = None
    id: RoutedPoint = UNSET


StationToBroker = Hello | Heartbeat | Ack | SessionComplete


class Welcome(Struct, tag="welcome", tag_field="type", kw_only=True, frozen=True):
    heartbeat_s: float = 1.0
    id: RoutedPoint = UNSET


class Hold(Struct, tag="hold", tag_field="type", kw_only=True, frozen=True):
    cmd_id: str
    reservation_id: str
    vehicle_id: str
    until: float
    id: RoutedPoint = UNSET


class Release(Struct, tag="release", tag_field="type", kw_only=True, frozen=True):
    cmd_id: str
    reservation_id: str
    id: RoutedPoint = UNSET


class Start(Struct, tag="start", tag_field="type", kw_only=True, frozen=True):
    cmd_id: str
    session_id: str
    vehicle_id: str
    nivel_bateria: float
    nivel_carregar: float
    capacidade_kwh: float
    kw: DrawnKw | None = None  # the session's first limit on a site (None: unlimited)
    id: RoutedPoint = UNSET


class Limit(Struct, tag="limit", tag_field="type", kw_only=True, frozen=True):
    """The most the session may draw from now on (energy.md); ``kw`` 0 pauses it."""

    cmd_id: str
    session_id: str
    kw: DrawnKw
    id: RoutedPoint = UNSET


class Stop(Struct, tag="stop", tag_field="type", kw_only=True, frozen=True):
    cmd_id: str
    session_id: str
    id: RoutedPoint = UNSET


class SessionAck(Struct, tag="session_ack", tag_field="type", kw_only=True, frozen=True):
    session_id: str
    id: RoutedPoint = UNSET


class Availability(Struct, tag="availability", tag_field="type", kw_only=True, frozen=True):
    """A notice, not a command (no ack): an operator took the point out of service
    (``available`` false) or put it back; sent to stations whose hello asked for it."""

    available: bool
    reason: str = ""
    id: RoutedPoint = UNSET


BrokerToStation = (
    Welcome | Heartbeat | Hold | Release | Start | Limit | Stop | SessionAck | Availability
)

# --- event bus and history ------------------------------------------------------------

TOPICS: Final = (
    "broker.started",
    "point.registered",
    "point.availability",
    "point.status",
    "point.online",
    "point.offline",
    "reservation.created",
    "reservation.turn",
    "reservation.cancelled",
    "reservation.expired",
    "charging.started",
    "charging.completed",
    "vehicle.connected",
    "vehicle.disconnected",
    "vehicle.low_battery",
    "tariff.updated",
    "site.updated",
    "site.allocation",
    "site.overdraw",
    "charging.paused",
    "charging.resumed",
)


class BusEvent(Struct, frozen=True):
    """Payload of a bus message (second frame); the first frame is ``topic``."""

    seq: int
    ts: float
    topic: str
    data: dict[str, Any]


MAX_HISTORY_LIMIT: Final = 1000


class HistorySince(Struct, tag="since", tag_field="op", frozen=True, forbid_unknown_fields=True):
    seq: Annotated[int, Meta(ge=0)] = 0
    limit: Annotated[int, Meta(ge=1)] = MAX_HISTORY_LIMIT


class HistorySnapshot(
    Struct, tag="snapshot", tag_field="op", frozen=True, forbid_unknown_fields=True
):
    pass


class HistoryAccounts(
    Struct, tag="accounts", tag_field="op", frozen=True, forbid_unknown_fields=True
):
    """Every vehicle's statement (for reconciliation)."""


class HistorySetAvailability(
    Struct, tag="set_availability", tag_field="op", frozen=True, forbid_unknown_fields=True
):
    """An operator takes a point out of service or back (rules.md "Out of service").

    The fields are checked by the history edge, which words each refusal.
    """

    point_id: Any = None
    available: Any = None
    reason: Any = ""


class HistoryTariffs(
    Struct, tag="tariffs", tag_field="op", frozen=True, forbid_unknown_fields=True
):
    """An operator manages tariffs (docs/tariffs.md): ``action`` ``set`` (``tariffs``: a
    list of OCPI Tariff objects), ``assign`` (``tariff_id``, ``points`` pattern),
    ``remove`` (``tariff_id``) or ``list``. The core checks the fields."""

    action: Any = None
    tariffs: Any = None
    tariff_id: Any = None
    points: Any = None


class HistorySites(Struct, tag="sites", tag_field="op", frozen=True, forbid_unknown_fields=True):
    """Every site with its limit, points and current allocation (energy.md)."""


class HistorySetSite(
    Struct, tag="set_site", tag_field="op", frozen=True, forbid_unknown_fields=True
):
    """An operator defines or changes a site; checked by the core, which words refusals."""

    name: Any = None
    limit_kw: Any = None
    points: Any = None
    min_kw: Any = None


class HistoryRemoveSite(
    Struct, tag="remove_site", tag_field="op", frozen=True, forbid_unknown_fields=True
):
    name: Any = None


HistoryRequest = (
    HistorySince
    | HistorySnapshot
    | HistoryAccounts
    | HistorySetAvailability
    | HistorySites
    | HistorySetSite
    | HistoryRemoveSite
    | HistoryTariffs
)
HISTORY_OPS: Final = (
    "since",
    "snapshot",
    "accounts",
    "set_availability",
    "sites",
    "set_site",
    "remove_site",
    "tariffs",
)


def to_builtins(obj: Any) -> Any:
    """A struct (or anything msgspec knows) as plain dicts/lists, e.g. for msgpack."""
    return msgspec.to_builtins(obj)
