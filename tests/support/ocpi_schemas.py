"""OCPI 2.2.1 objects as JSON Schema, written from the specification's module tables.

Written apart from the server's msgspec structs (broker/consumers/ocpi/models.py)
so that a mistake there is caught here: each schema lists the fields of
cardinality 1 as ``required``, the enums as the spec lists them, the
CiString/string lengths and the DateTime form. ``additionalProperties`` is
false, so a field OCPI does not know is an error too.
"""

from __future__ import annotations

from typing import Any, Final

import jsonschema

DATETIME: Final = {
    "type": "string",
    "maxLength": 25 + 4,  # RFC 3339, UTC; fractional seconds allowed
    "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?$",
}


def s(n: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": n}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    props = {**required, **(optional or {})}
    return {
        "type": "object",
        "properties": props,
        "required": sorted(required),
        "additionalProperties": False,
    }


def enum(*values: str) -> dict[str, Any]:
    return {"enum": list(values)}


def arr(item: dict[str, Any], min_items: int = 0) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": min_items}


NUMBER: Final = {"type": "number"}
EVSE_ID: Final = r"^[A-Z]{2}\*?[A-Z0-9]{3}\*?E[A-Z0-9*]{1,30}$"  # eMI3
INT: Final = {"type": "integer"}
GEO: Final = obj(
    {
        "latitude": {"type": "string", "pattern": r"^-?[0-9]{1,2}\.[0-9]{5,7}$"},
        "longitude": {"type": "string", "pattern": r"^-?[0-9]{1,3}\.[0-9]{5,7}$"},
    }
)
DISPLAY_TEXT: Final = obj({"language": s(2), "text": s(512)})
PRICE: Final = obj({"excl_vat": NUMBER}, {"incl_vat": NUMBER})
BUSINESS: Final = obj({"name": s(100)}, {"website": {"type": "string"}, "logo": {}})
STATUS: Final = enum(
    "AVAILABLE", "BLOCKED", "CHARGING", "INOPERATIVE", "OUTOFORDER", "PLANNED", "REMOVED",
    "RESERVED", "UNKNOWN",
)  # fmt: skip
CONNECTOR_TYPES: Final = enum(
    "CHADEMO", "CHAOJI", "DOMESTIC_A", "DOMESTIC_F", "GBT_AC", "GBT_DC", "IEC_62196_T1",
    "IEC_62196_T1_COMBO", "IEC_62196_T2", "IEC_62196_T2_COMBO", "IEC_62196_T3A", "TESLA_S",
)  # fmt: skip
FORMAT: Final = enum("SOCKET", "CABLE")
POWER_TYPE: Final = enum("AC_1_PHASE", "AC_2_PHASE", "AC_2_PHASE_SPLIT", "AC_3_PHASE", "DC")
CAPABILITY: Final = enum(
    "CHARGING_PROFILE_CAPABLE", "CHARGING_PREFERENCES_CAPABLE", "CHIP_CARD_SUPPORT",
    "CONTACTLESS_CARD_SUPPORT", "CREDIT_CARD_PAYABLE", "DEBIT_CARD_PAYABLE", "PED_TERMINAL",
    "REMOTE_START_STOP_CAPABLE", "RESERVABLE", "RFID_READER", "START_SESSION_CONNECTOR_REQUIRED",
    "TOKEN_GROUP_CAPABLE", "UNLOCK_CAPABLE",
)  # fmt: skip
TOKEN_TYPE: Final = enum("AD_HOC_USER", "APP_USER", "OTHER", "RFID")
AUTH_METHOD: Final = enum("AUTH_REQUEST", "COMMAND", "WHITELIST")

CONNECTOR: Final = obj(
    {
        "id": s(36), "standard": CONNECTOR_TYPES, "format": FORMAT, "power_type": POWER_TYPE,
        "max_voltage": INT, "max_amperage": INT, "last_updated": DATETIME,
    },
    {"max_electric_power": INT, "tariff_ids": arr(s(36)), "terms_and_conditions": s(255)},
)  # fmt: skip
EVSE: Final = obj(
    {"uid": s(36), "status": STATUS, "connectors": arr(CONNECTOR, 1), "last_updated": DATETIME},
    {
        "evse_id": {"type": "string", "maxLength": 48, "pattern": EVSE_ID},
        "status_schedule": arr({}), "capabilities": arr(CAPABILITY), "floor_level": s(4),
        "coordinates": GEO, "physical_reference": s(16), "directions": arr(DISPLAY_TEXT),
        "parking_restrictions": arr({}), "images": arr({}),
    },
)  # fmt: skip
LOCATION: Final = obj(
    {
        "country_code": s(2), "party_id": s(3), "id": s(36), "publish": {"type": "boolean"},
        "address": s(255), "city": s(45), "country": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "coordinates": GEO, "time_zone": s(255), "last_updated": DATETIME,
    },
    {
        "name": s(255), "postal_code": s(10), "state": s(45), "evses": arr(EVSE),
        "operator": BUSINESS, "suboperator": BUSINESS, "owner": BUSINESS,
        "facilities": arr({}), "opening_times": {}, "charging_when_closed": {"type": "boolean"},
        "publish_allowed_to": arr({}), "related_locations": arr({}), "parking_type": {},
        "directions": arr(DISPLAY_TEXT), "images": arr({}), "energy_mix": {},
    },
)  # fmt: skip
EVSE_STATUS_PATCH: Final = obj({"status": STATUS, "last_updated": DATETIME})
CDR_TOKEN: Final = obj(
    {
        "country_code": s(2), "party_id": s(3), "uid": s(36), "type": TOKEN_TYPE,
        "contract_id": s(36),
    }
)  # fmt: skip
DIMENSION: Final = obj(
    {
        "type": enum(
            "CURRENT", "ENERGY", "ENERGY_EXPORT", "ENERGY_IMPORT", "MAX_CURRENT", "MIN_CURRENT",
            "MAX_POWER", "MIN_POWER", "PARKING_TIME", "POWER", "RESERVATION_TIME",
            "STATE_OF_CHARGE", "TIME",
        ),
        "volume": NUMBER,
    }
)  # fmt: skip
PERIOD: Final = obj(
    {"start_date_time": DATETIME, "dimensions": arr(DIMENSION, 1)}, {"tariff_id": s(36)}
)
SESSION: Final = obj(
    {
        "country_code": s(2), "party_id": s(3), "id": s(36), "start_date_time": DATETIME,
        "kwh": NUMBER, "cdr_token": CDR_TOKEN, "auth_method": AUTH_METHOD,
        "location_id": s(36), "evse_uid": s(36), "connector_id": s(36), "currency": s(3),
        "status": enum("ACTIVE", "COMPLETED", "INVALID", "PENDING", "RESERVATION"),
        "last_updated": DATETIME,
    },
    {
        "end_date_time": DATETIME, "authorization_reference": s(36), "meter_id": s(255),
        "charging_periods": arr(PERIOD), "total_cost": PRICE,
    },
)  # fmt: skip
SESSION_PATCH: Final = obj({"kwh": NUMBER, "last_updated": DATETIME})
CDR_LOCATION: Final = obj(
    {
        "id": s(36), "address": s(45), "city": s(45), "country": s(3), "coordinates": GEO,
        "evse_uid": s(36), "evse_id": s(48), "connector_id": s(36),
        "connector_standard": CONNECTOR_TYPES, "connector_format": FORMAT,
        "connector_power_type": POWER_TYPE,
    },
    {"name": s(255), "postal_code": s(10), "state": s(20)},
)  # fmt: skip
CDR: Final = obj(
    {
        "country_code": s(2), "party_id": s(3), "id": s(39), "start_date_time": DATETIME,
        "end_date_time": DATETIME, "cdr_token": CDR_TOKEN, "auth_method": AUTH_METHOD,
        "cdr_location": CDR_LOCATION, "currency": s(3), "charging_periods": arr(PERIOD, 1),
        "total_cost": PRICE, "total_energy": NUMBER, "total_time": NUMBER,
        "last_updated": DATETIME,
    },
    {
        "session_id": s(36), "authorization_reference": s(36), "meter_id": s(255),
        "tariffs": arr({}), "signed_data": {}, "total_fixed_cost": PRICE,
        "total_energy_cost": PRICE, "total_time_cost": PRICE, "total_parking_time": NUMBER,
        "total_parking_cost": PRICE, "total_reservation_cost": PRICE, "remark": s(255),
        "invoice_reference_id": s(39), "credit": {"type": "boolean"},
        "credit_reference_id": s(39), "home_charging_compensation": {"type": "boolean"},
    },
)  # fmt: skip
COMMAND_RESPONSE: Final = obj(
    {
        "result": enum("NOT_SUPPORTED", "REJECTED", "ACCEPTED", "UNKNOWN_SESSION"),
        "timeout": INT,
    },
    {"message": arr(DISPLAY_TEXT)},
)
COMMAND_RESULT: Final = obj(
    {
        "result": enum(
            "ACCEPTED", "CANCELED_RESERVATION", "EVSE_OCCUPIED", "EVSE_INOPERATIVE", "FAILED",
            "NOT_SUPPORTED", "REJECTED", "TIMEOUT", "UNKNOWN_RESERVATION",
        )
    },
    {"message": arr(DISPLAY_TEXT)},
)  # fmt: skip
PRICE_COMPONENT: Final = obj(
    {"type": enum("ENERGY", "FLAT", "PARKING_TIME", "TIME"), "price": NUMBER, "step_size": INT},
    {"vat": NUMBER},
)
ELEMENT: Final = obj({"price_components": arr(PRICE_COMPONENT, 1)}, {"restrictions": {}})
TARIFF: Final = obj(
    {
        "country_code": s(2), "party_id": s(3), "id": s(36), "currency": s(3),
        "elements": arr(ELEMENT, 1),
        "last_updated": DATETIME,
    },
    {
        "type": {}, "tariff_alt_text": arr(DISPLAY_TEXT), "tariff_alt_url": {},
        "min_price": PRICE, "max_price": PRICE, "start_date_time": DATETIME,
        "end_date_time": DATETIME, "energy_mix": {},
    },
)  # fmt: skip
CREDENTIALS: Final = obj(
    {
        "token": s(64), "url": {"type": "string"},
        "roles": arr(
            obj({
                "role": enum("CPO", "EMSP", "HUB", "NAP", "NSP", "OTHER", "SCSP"),
                "business_details": BUSINESS, "party_id": s(3), "country_code": s(2),
            }),
            1,
        ),
    }
)  # fmt: skip
ENVELOPE: Final = obj(
    {"status_code": INT, "timestamp": DATETIME}, {"data": {}, "status_message": {"type": "string"}}
)

SCHEMAS: Final = {
    "Location": LOCATION, "EVSE": EVSE, "Connector": CONNECTOR,
    "EvseStatusPatch": EVSE_STATUS_PATCH,
    "Session": SESSION, "SessionPatch": SESSION_PATCH, "CDR": CDR,
    "CommandResponse": COMMAND_RESPONSE,
    "CommandResult": COMMAND_RESULT, "Tariff": TARIFF, "Credentials": CREDENTIALS,
    "Envelope": ENVELOPE,
}  # fmt: skip


def problems(kind: str, doc: Any) -> list[str]:
    """Every way ``doc`` breaks the schema of ``kind`` (empty when it fits)."""
    validator = jsonschema.Draft202012Validator(SCHEMAS[kind])
    return [f"{kind}{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def check(kind: str, doc: Any) -> None:
    found = problems(kind, doc)
    assert not found, found
