"""Vehicle replies and pushes: the ``data`` of every message the broker writes to a vehicle.

One struct per payload, in the order docs/protocol.md lists them. The broker
builds these and the reply encoder writes them, so a struct here is the
definition of its bytes on the wire: fields go out in the order they are
declared, a field typed ``... | UnsetType`` is left out while unset, and every
other field is always written (``None`` as ``null``). The JSON Schemas in
docs/schema/reply/ and docs/schema/push/ are generated from them (:mod:`common.schema`).

Refusal and error codes are typed from the error classes (:mod:`common.errors`):
a payload carries ``err.code`` of the exception it reports, built by
:func:`refusal` and :func:`error_data`, so a code cannot drift from its class.
Pushes are named after their wire ``type``, as the requests are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal

from msgspec import UNSET, Raw, Struct, UnsetType

from common.errors import REFUSAL_CODES, WIRE_ERROR_CODES, EVError

if TYPE_CHECKING:
    ErrorCode = str
    RefusalCode = str
else:  # msgspec reads these (decoding, schemas); the codes come from the error classes
    ErrorCode = Literal[WIRE_ERROR_CODES]
    RefusalCode = Literal[REFUSAL_CODES]

PointEstado = Literal["disponivel", "reservado", "carregando", "indisponivel", "offline"]


class Payload(Struct, kw_only=True, frozen=True, gc=False):
    """Base of every payload: keyword-only fields, immutable, never in a reference cycle."""


# --- error reply (``erro``) -----------------------------------------------------------------


class ErrorData(Payload, kw_only=True, frozen=True):
    """``erro``: a request the broker could not take."""

    code: ErrorCode
    message: str
    field: str | UnsetType = UNSET


def error_data(err: EVError) -> ErrorData:
    """The ``erro`` data for ``err`` (``field`` only when one field is at fault)."""
    return ErrorData(
        code=err.code, message=err.message, field=UNSET if err.field is None else err.field
    )


# --- outcomes: ``*_response``, ``registro``, ``autenticado`` ----------------------------------


class Outcome(Payload, kw_only=True, frozen=True):
    """``{status, code, message, ...}``: how every ``*_response`` begins."""

    status: Literal["success", "error"]
    code: str
    message: str


class PointOutcome(Outcome, kw_only=True, frozen=True):
    """An outcome about one vehicle at one point (``reserva``, ``cancelar``, ``chegada``,
    ``parar``)."""

    vehicle_id: str
    id_ponto_recarga: str


class Refusal(PointOutcome, kw_only=True, frozen=True):
    """A well-formed request refused: ``status`` error and the refusal's ``code``."""

    status: Literal["error"] = "error"
    code: RefusalCode


def refusal(err: EVError, vehicle_id: str, point_id: str) -> Refusal:
    """A ``*_response`` with status error, its code taken from the error class."""
    return Refusal(
        code=err.code, message=err.message, vehicle_id=vehicle_id, id_ponto_recarga=point_id
    )


class Accepted(PointOutcome, kw_only=True, frozen=True):
    """A request about a vehicle at a point, done: ``status`` success."""

    status: Literal["success"] = "success"


class Reserved(Accepted, kw_only=True, frozen=True):
    """``reserva_response`` accepted; ``expira_em`` only once the reservation holds the turn."""

    code: Literal["reserved"] = "reserved"
    reservation_id: str
    posicao: int
    expira_em: str | UnsetType = UNSET


class Cancelled(Accepted, kw_only=True, frozen=True):
    """``cancelar_response`` accepted."""

    code: Literal["cancelled"] = "cancelled"
    reservation_id: str


class Started(Accepted, kw_only=True, frozen=True):
    """``chegada_response`` once the station acked the start."""

    code: Literal["started"] = "started"
    session_id: str


class Stopping(Accepted, kw_only=True, frozen=True):
    """``parar_response`` accepted: the station was asked to stop."""

    code: Literal["stopping"] = "stopping"
    session_id: str


class Registered(Outcome, kw_only=True, frozen=True):
    """``registro`` accepted: the token, shown this once."""

    status: Literal["success"] = "success"
    code: Literal["registered"] = "registered"
    token: str


class RegistrationRefused(Outcome, kw_only=True, frozen=True):
    """``registro`` refused (the id is registered already)."""

    status: Literal["error"] = "error"
    code: RefusalCode


class Authenticated(Outcome, kw_only=True, frozen=True):
    """``autenticado``."""

    status: Literal["success"] = "success"
    code: Literal["authenticated"] = "authenticated"


# --- queries ----------------------------------------------------------------------------------


class TariffView(Payload, kw_only=True, frozen=True):
    """``tarifa`` of a point priced by a tariff: the prices in force now, VAT
    included, and when they next change (docs/tariffs.md)."""

    id: str
    currency: str
    energy_kwh: float
    per_minute: float
    parking_per_minute: float
    flat: float
    valid_until: str | None


class PointView(Payload, kw_only=True, frozen=True):
    """The Point object of ``bateria`` and ``consulta`` replies.

    ``fora_de_servico`` and ``reason`` only while an operator holds the point out
    of service; ``distance`` (km from the vehicle) in every query reply.
    """

    id: str
    latitude: float
    longitude: float
    available: bool
    estado: PointEstado
    queue_size: int
    queue_capacity: int
    fora_de_servico: bool | UnsetType = UNSET
    reason: str | UnsetType = UNSET
    distance: float | UnsetType = UNSET
    potencia_kw: float
    preco_kwh: float
    tarifa: TariffView | UnsetType = UNSET
    espera_estimada_min: int
    #: when the request carried capacidade_kwh and nivel_carregar (docs/tariffs.md)
    custo_estimado: float | UnsetType = UNSET


class Points(Payload, kw_only=True, frozen=True):
    """``pontos_disponiveis``: the usable points, nearest first."""

    pontos: list[PointView]


class ReservationView(Payload, kw_only=True, frozen=True):
    """A reservation in ``status_veiculo``; ``expira_em`` is null until it holds the turn."""

    reservation_id: str
    vehicle_id: str
    id_ponto_recarga: str
    posicao: int
    criada_em: str
    tempo_estimado: float
    turno: bool
    expira_em: str | None


class SessionView(Payload, kw_only=True, frozen=True):
    """A session in ``status_veiculo``.

    ``estado`` ``carregando``: a running session, every field present.
    ``iniciando``: the station was asked to start and has not acked yet; only
    the ids and ``estado``. ``aguardando_energia``: running on a site that has
    no power for it now (energy.md). On a site, ``potencia_kw`` and ``eta_min``
    say what it may draw and when it should reach its target.
    """

    session_id: str
    vehicle_id: str
    id_ponto_recarga: str
    inicio: str | UnsetType = UNSET
    nivel_inicial: float | UnsetType = UNSET
    nivel_carregar: float | UnsetType = UNSET
    capacidade_kwh: float | UnsetType = UNSET
    preco_kwh: float | UnsetType = UNSET
    payment_method: str | UnsetType = UNSET
    energia_kwh: float | UnsetType = UNSET
    estado: Literal["carregando", "iniciando", "aguardando_energia"]
    # on a site (energy.md): the power it may draw now and the minutes to its target
    potencia_kw: float | UnsetType = UNSET
    eta_min: int | UnsetType = UNSET


class VehicleStatus(Payload, kw_only=True, frozen=True):
    """``status_veiculo``."""

    reserva: ReservationView | None
    sessao: SessionView | None


class StatementLine(Payload, kw_only=True, frozen=True):
    """One billed session of an ``extrato``."""

    session_id: str
    id_ponto_recarga: str
    inicio: str
    fim: str
    energia_kwh: float
    cost: float
    payment_method: str
    #: the CDR totals (docs/tariffs.md) of a session a tariff priced
    cdr: dict[str, Any] | UnsetType = UNSET


class Statement(Payload, kw_only=True, frozen=True):
    """``extrato``: every billed session of the vehicle, oldest first, and their total."""

    vehicle_id: str
    moeda: str
    total: float
    sessoes: list[StatementLine]


class Pong(Payload, kw_only=True, frozen=True):
    """``pong``: ``{}``."""


PONG: Final = Pong()

# --- pushes -----------------------------------------------------------------------------------


class SuaVez(Payload, kw_only=True, frozen=True):
    """``sua_vez``: the reservation holds the turn; arrive before ``expira_em``."""

    id_ponto_recarga: str
    reservation_id: str
    expira_em: str


class ReservaExpirada(Payload, kw_only=True, frozen=True):
    """``reserva_expirada``: the turn passed without an arrival."""

    id_ponto_recarga: str
    reservation_id: str


class ReservaCancelada(Payload, kw_only=True, frozen=True):
    """``reserva_cancelada``: the broker cancelled the reservation (``motivo`` says why)."""

    id_ponto_recarga: str
    reservation_id: str
    motivo: str


class CustoFinal(Payload, kw_only=True, frozen=True):
    """``custo_final``: the session ended and is billed."""

    vehicle_id: str
    id_ponto_recarga: str
    session_id: str
    cost: float
    moeda: str
    payment_method: str
    energia_kwh: float
    nivel_inicial: float
    nivel_final: float
    duracao_s: float
    #: the OCPI CDR (docs/tariffs.md) when the point's tariff priced the session
    cdr: dict[str, Any] | UnsetType = UNSET


class Encerramento(Payload, kw_only=True, frozen=True):
    """``encerramento``: right after ``custo_final``; ``energia_consumida`` in percentage
    points."""

    id_veiculo: str
    id_ponto_recarga: str
    session_id: str
    energia_consumida: float
    energia_kwh: float


# --- by wire type -----------------------------------------------------------------------------

ReplyData = (
    ErrorData
    | Refusal
    | Reserved
    | Cancelled
    | Started
    | Stopping
    | Registered
    | RegistrationRefused
    | Authenticated
    | VehicleStatus
    | Statement
    | Pong
    | Raw  # bateria/consulta: point lists encoded from cached PointView bytes (point_views)
)
PushData = SuaVez | ReservaExpirada | ReservaCancelada | CustoFinal | Encerramento

#: every reply ``type`` and the payloads its ``data`` may be
REPLY_DATA: Final[dict[str, tuple[Any, ...]]] = {
    "erro": (ErrorData,),
    "pontos_disponiveis": (Points,),
    "lista_pontos": (list[PointView],),
    "reserva_response": (Reserved, Refusal),
    "cancelar_response": (Cancelled, Refusal),
    "chegada_response": (Started, Refusal),
    "parar_response": (Stopping, Refusal),
    "extrato": (Statement,),
    "status_veiculo": (VehicleStatus,),
    "pong": (Pong,),
    "registro": (Registered, RegistrationRefused),
    "autenticado": (Authenticated,),
}

#: every push ``type`` and its payload
PUSH_DATA: Final[dict[str, type[Payload]]] = {
    "sua_vez": SuaVez,
    "reserva_expirada": ReservaExpirada,
    "reserva_cancelada": ReservaCancelada,
    "custo_final": CustoFinal,
    "encerramento": Encerramento,
}


#: payloads that carry a code (a tuple: ``A | B`` would build a union on every call)
_CODED = (ErrorData, Refusal, RegistrationRefused)


def outcome_code(reply_type: str, data: object) -> str:
    """``ok``, or the error or refusal code a reply carries (for metrics)."""
    if isinstance(data, _CODED):
        return data.code
    if isinstance(data, dict):  # an edge's own ``erro`` (EVError.to_wire)
        if reply_type == "erro":
            return str(data.get("code", "internal"))
        if data.get("status") == "error":
            return str(data.get("code", "error"))
    return "ok"
