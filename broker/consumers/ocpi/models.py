"""OCPI 2.2.1 objects as msgspec structs: what the CPO emits and what it accepts.

Field names, cardinalities and enums follow the OCPI 2.2.1 modules (Locations,
Sessions, CDRs, Tariffs, Tokens, Commands, Credentials, Versions). Optional
fields default to None and are left out of the JSON (``omit_defaults``), as
OCPI wants absent rather than null. Inbound objects (credentials, tokens,
commands) are decoded with these structs, so a missing required field or a
wrong type is refused with one message naming the field.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec
from msgspec import Struct

VERSION: Final = "2.2.1"

EvseStatus = Literal[
    "AVAILABLE",
    "BLOCKED",
    "CHARGING",
    "INOPERATIVE",
    "OUTOFORDER",
    "PLANNED",
    "REMOVED",
    "RESERVED",
    "UNKNOWN",
]
TokenType = Literal["AD_HOC_USER", "APP_USER", "OTHER", "RFID"]
Whitelist = Literal["ALWAYS", "ALLOWED", "ALLOWED_OFFLINE", "NEVER"]
CommandResponseType = Literal["NOT_SUPPORTED", "REJECTED", "ACCEPTED", "UNKNOWN_SESSION"]
CommandResultType = Literal[
    "ACCEPTED",
    "CANCELED_RESERVATION",
    "EVSE_OCCUPIED",
    "EVSE_INOPERATIVE",
    "FAILED",
    "NOT_SUPPORTED",
    "REJECTED",
    "TIMEOUT",
    "UNKNOWN_RESERVATION",
]


class _O(Struct, omit_defaults=True, kw_only=True):
    """Base: optional fields absent from the JSON when unset."""


# --- shared types ---------------------------------------------------------------------


class DisplayText(_O):
    language: str
    text: str


class GeoLocation(_O):
    latitude: str
    longitude: str


class BusinessDetails(_O):
    name: str
    website: str | None = None


class Price(_O):
    excl_vat: float
    incl_vat: float | None = None


# --- versions and credentials ---------------------------------------------------------


class Version(_O):
    version: str
    url: str


class Endpoint(_O):
    identifier: str
    role: Literal["SENDER", "RECEIVER"]
    url: str


class VersionDetails(_O):
    version: str
    endpoints: list[Endpoint]


class CredentialsRole(_O):
    role: str
    business_details: BusinessDetails
    party_id: str
    country_code: str


class Credentials(_O):
    token: str
    url: str
    roles: list[CredentialsRole]


# --- locations ------------------------------------------------------------------------


class Connector(_O):
    id: str
    standard: str
    format: Literal["SOCKET", "CABLE"]
    power_type: str
    max_voltage: int
    max_amperage: int
    last_updated: str
    max_electric_power: int | None = None
    tariff_ids: list[str] | None = None


class EVSE(_O):
    uid: str
    status: EvseStatus
    connectors: list[Connector]
    last_updated: str
    evse_id: str | None = None
    capabilities: list[str] | None = None
    coordinates: GeoLocation | None = None
    physical_reference: str | None = None


class Location(_O):
    country_code: str
    party_id: str
    id: str
    publish: bool
    address: str
    city: str
    country: str
    coordinates: GeoLocation
    time_zone: str
    last_updated: str
    name: str | None = None
    evses: list[EVSE] | None = None
    operator: BusinessDetails | None = None


# --- tokens ---------------------------------------------------------------------------


class Token(_O):
    country_code: str
    party_id: str
    uid: str
    type: TokenType
    contract_id: str
    issuer: str
    valid: bool
    whitelist: Whitelist
    last_updated: str
    visual_number: str | None = None
    group_id: str | None = None
    language: str | None = None


class CdrToken(_O):
    country_code: str
    party_id: str
    uid: str
    type: TokenType
    contract_id: str


# --- sessions and CDRs ----------------------------------------------------------------


class CdrDimension(_O):
    type: str
    volume: float


class ChargingPeriod(_O):
    start_date_time: str
    dimensions: list[CdrDimension]
    tariff_id: str | None = None


class Session(_O):
    country_code: str
    party_id: str
    id: str
    start_date_time: str
    kwh: float
    cdr_token: CdrToken
    auth_method: Literal["AUTH_REQUEST", "COMMAND", "WHITELIST"]
    location_id: str
    evse_uid: str
    connector_id: str
    currency: str
    status: Literal["ACTIVE", "COMPLETED", "INVALID", "PENDING", "RESERVATION"]
    last_updated: str
    end_date_time: str | None = None
    authorization_reference: str | None = None
    charging_periods: list[ChargingPeriod] | None = None
    total_cost: Price | None = None


class CdrLocation(_O):
    id: str
    address: str
    city: str
    country: str
    coordinates: GeoLocation
    evse_uid: str
    evse_id: str
    connector_id: str
    connector_standard: str
    connector_format: str
    connector_power_type: str
    name: str | None = None


class CDR(_O):
    country_code: str
    party_id: str
    id: str
    start_date_time: str
    end_date_time: str
    cdr_token: CdrToken
    auth_method: Literal["AUTH_REQUEST", "COMMAND", "WHITELIST"]
    cdr_location: CdrLocation
    currency: str
    charging_periods: list[ChargingPeriod]
    total_cost: Price
    total_energy: float
    total_time: float
    last_updated: str
    session_id: str | None = None
    authorization_reference: str | None = None
    tariffs: list[dict[str, Any]] | None = None
    total_energy_cost: Price | None = None
    total_fixed_cost: Price | None = None
    total_time_cost: Price | None = None
    total_parking_time: float | None = None
    total_parking_cost: Price | None = None


# --- commands -------------------------------------------------------------------------


class StartSession(_O):
    response_url: str
    token: Token
    location_id: str
    evse_uid: str | None = None
    connector_id: str | None = None
    authorization_reference: str | None = None


class StopSession(_O):
    response_url: str
    session_id: str


class ReserveNow(_O):
    response_url: str
    token: Token
    expiry_date: str
    reservation_id: str
    location_id: str
    evse_uid: str | None = None
    authorization_reference: str | None = None


class CancelReservation(_O):
    response_url: str
    reservation_id: str


COMMANDS: Final[dict[str, type[Struct]]] = {
    "START_SESSION": StartSession,
    "STOP_SESSION": StopSession,
    "RESERVE_NOW": ReserveNow,
    "CANCEL_RESERVATION": CancelReservation,
}


class CommandResponse(_O):
    result: CommandResponseType
    timeout: int
    message: list[DisplayText] | None = None


class CommandResult(_O):
    result: CommandResultType
    message: list[DisplayText] | None = None


# --- the response envelope ------------------------------------------------------------


class Envelope(_O):
    status_code: int
    timestamp: str
    data: Any = None
    status_message: str | None = None


encode = msgspec.json.Encoder().encode
