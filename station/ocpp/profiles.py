"""Power limits for OCPP chargers (energy.md): a broker ``limit`` as a charging profile.

The broker tells a session the most it may draw (kW, 0 pauses); a charger is
told the same as a ``TxProfile`` for the running transaction, in watts. The
mapping is pure and version-neutral up to the payload: :func:`limit_watts` and
:class:`PowerLimit` say what to enforce, :func:`set_profile_16` builds the OCPP
1.6J call; another protocol version maps the same :class:`PowerLimit` to its
own ``SetChargingProfile``. A charger that answers anything but ``Accepted``
does not take profiles: the limit is refused (the broker keeps the higher limit
in force and the point should not be in a site).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from ocpp.v16 import call
from ocpp.v201 import call as call201

PROFILE_ID_BASE: Final = 1000  # profile ids: base + transaction id (one profile per transaction)
ACCEPTED: Final = "Accepted"


def limit_watts(kw: float) -> int:
    """The broker's kW as whole watts for a charging schedule (rounded down: never more)."""
    return max(0, int(kw * 1000.0 + 1e-6))


@dataclass(frozen=True, slots=True)
class PowerLimit:
    """What a charger must enforce for one transaction."""

    session_id: str
    transaction_id: int
    connector_id: int
    watts: int

    @property
    def profile_id(self) -> int:
        return PROFILE_ID_BASE + self.transaction_id


def set_profile_16(limit: PowerLimit) -> call.SetChargingProfile:
    """The OCPP 1.6J ``SetChargingProfile``: a ``TxProfile`` for the transaction, unit W."""
    profile: dict[str, Any] = {
        "charging_profile_id": limit.profile_id,
        "transaction_id": limit.transaction_id,
        "stack_level": 0,
        "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Relative",
        "charging_schedule": {
            "charging_rate_unit": "W",
            "charging_schedule_period": [{"start_period": 0, "limit": float(limit.watts)}],
        },
    }
    return call.SetChargingProfile(connector_id=limit.connector_id, cs_charging_profiles=profile)


def set_profile_201(limit: PowerLimit, transaction_id: str) -> call201.SetChargingProfile:
    """The OCPP 2.0.1 ``SetChargingProfile``: a ``TxProfile`` for the transaction (its
    string id) on the EVSE ``limit.connector_id``, unit W."""
    profile: dict[str, Any] = {
        "id": limit.profile_id,
        "stack_level": 0,
        "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Relative",
        "transaction_id": transaction_id,
        "charging_schedule": [
            {
                "id": limit.profile_id,
                "charging_rate_unit": "W",
                "charging_schedule_period": [{"start_period": 0, "limit": float(limit.watts)}],
            }
        ],
    }
    return call201.SetChargingProfile(evse_id=limit.connector_id, charging_profile=profile)


POWER_MEASURAND: Final = "Power.Active.Import"


def power_reading(meter_value: Any) -> float | None:
    """The latest ``Power.Active.Import`` (without a phase) of a MeterValues list, in
    kW (units ``W``, the default, or ``kW``); None when there is none. It becomes the
    datagram's ``potencia_atual_kw``, so the broker sees what a charger in a site draws."""
    kw: float | None = None
    for mv in meter_value if isinstance(meter_value, list) else []:
        samples = mv.get("sampled_value") if isinstance(mv, dict) else None
        for sv in samples if isinstance(samples, list) else []:
            if not isinstance(sv, dict) or sv.get("measurand") != POWER_MEASURAND:
                continue
            if sv.get("phase"):
                continue
            try:
                # (ignored below) a charger's value may be anything; a bad one is caught below
                value = float(sv.get("value"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            unit = sv.get("unit") or "W"
            if math.isfinite(value) and value >= 0 and unit in ("W", "kW"):
                kw = value / 1000.0 if unit == "W" else value
    return kw


def refusal(status: Any) -> str | None:
    """None when the charger took the profile, else the ``ack`` error to send."""
    if status == ACCEPTED:
        return None
    return f"limits_refused: SetChargingProfile answered {status}"
