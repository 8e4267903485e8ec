"""Pure rules between OCPP 1.6J and the station protocol (no I/O, no clock).

Each rule is stated in docs/ocpp.md; this module is the one place that applies it.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Final, Literal

from ocpp.v16 import call

from common.messages import VEHICLE_ID_PATTERN

VERSION: Final = "1.6"
SUBPROTOCOL: Final = "ocpp1.6"

StationState = Literal["disponivel", "carregando", "indisponivel"]
Reason = Literal["target_reached", "stopped", "fault"]

ID_TAG_MAX: Final = 20  # OCPP 1.6 idToken is CiString20Type
ENERGY_MEASURAND: Final = "Energy.Active.Import.Register"
SOC_MEASURAND: Final = "SoC"
_VEHICLE_ID_RE: Final = re.compile(VEHICLE_ID_PATTERN)

# OCPP ChargePointStatus -> (estado on our wire, ``available``)
STATUS_MAP: Final[dict[str, tuple[StationState, bool]]] = {
    "Available": ("disponivel", True),
    "Preparing": ("disponivel", False),  # a plug is in, no energy yet
    "Charging": ("carregando", False),
    "SuspendedEV": ("carregando", False),  # the session runs, the car takes nothing now
    "SuspendedEVSE": ("carregando", False),  # the session runs, the charger gives nothing now
    "Finishing": ("disponivel", False),  # the session ended, the plug is still in
    "Reserved": ("disponivel", False),  # shown like our held stations
    "Unavailable": ("indisponivel", False),
    "Faulted": ("indisponivel", False),
}

# OCPP ChargePointStatus values while a vehicle is plugged in (Finishing: charged, still in)
PLUGGED: Final = frozenset({"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing"})


def connector_free(connector_status: str) -> bool:
    """``conector_livre`` on our wire: the vehicle left (StatusNotification Available, or
    any status without a plug in, after Finishing); parking time ends there."""
    return connector_status not in PLUGGED


# OCPP StopTransaction reasons that mean the charger, not a person, ended the session
FAULT_REASONS: Final = frozenset({"EmergencyStop", "HardReset", "SoftReset", "PowerLoss", "Reboot"})


def station_state(connector_status: str, charger_status: str | None) -> tuple[StationState, bool]:
    """Our ``(estado, available)`` for the connector's and the whole charger's (connector 0)
    last OCPP status; a charger-wide ``Unavailable``/``Faulted`` wins."""
    if charger_status in ("Unavailable", "Faulted"):
        return "indisponivel", False
    return STATUS_MAP.get(connector_status, ("indisponivel", False))


def stop_reason(ocpp_reason: str | None, energy_wh: int, target_wh: int | None) -> Reason:
    """``target_reached`` when the meter reached the vehicle's target, ``fault`` for a charger
    failure (emergency stop, power loss, reset, reboot), ``stopped`` otherwise."""
    if ocpp_reason in FAULT_REASONS:
        return "fault"
    if target_wh is not None and energy_wh >= target_wh:
        return "target_reached"
    return "stopped"


def target_wh(nivel_bateria: float, nivel_carregar: float, capacidade_kwh: float) -> int:
    """The energy the vehicle asked for, in Wh (the broker's formula, rounded)."""
    return round((nivel_carregar - nivel_bateria) / 100.0 * capacidade_kwh * 1000.0)


def final_level(nivel_bateria: float, energy_wh: int, capacidade_kwh: float) -> float:
    """The battery level a metered energy implies (4 decimals, at most 100)."""
    gained = energy_wh / 1000.0 / capacidade_kwh * 100.0 if capacidade_kwh > 0 else 0.0
    return round(min(100.0, nivel_bateria + gained), 4)


def meter_reading(meter_value: Any) -> tuple[int | None, float | None]:
    """The latest register reading (Wh) and state of charge (%) in a MeterValues list.

    Only ``Energy.Active.Import.Register`` (the default measurand when none is named)
    without a phase counts as the meter; units ``Wh`` (default) and ``kWh``. Values
    that are not finite numbers are ignored.
    """
    wh: int | None = None
    soc: float | None = None
    if not isinstance(meter_value, list):
        return None, None
    for mv in meter_value:
        samples = mv.get("sampled_value") if isinstance(mv, dict) else None
        if not isinstance(samples, list):
            continue
        for sv in samples:
            if not isinstance(sv, dict):
                continue
            value = _finite(sv.get("value"))
            if value is None:
                continue
            measurand = sv.get("measurand") or ENERGY_MEASURAND
            if measurand == ENERGY_MEASURAND and not sv.get("phase"):
                unit = sv.get("unit") or "Wh"
                if unit == "Wh":
                    wh = round(value)
                elif unit == "kWh":
                    wh = round(value * 1000.0)
            elif measurand == SOC_MEASURAND and 0.0 <= value <= 100.0:
                soc = value
    return wh, soc


def _finite(text: Any) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def id_tag_for(vehicle_id: str) -> str:
    """The idTag sent to a charger for ``vehicle_id``: the id itself when it fits in 20
    characters, else ``V`` + 19 hex digits of its SHA-256 (stable, practically unique)."""
    if len(vehicle_id) <= ID_TAG_MAX:
        return vehicle_id
    return "V" + hashlib.sha256(vehicle_id.encode("utf-8")).hexdigest()[: ID_TAG_MAX - 1]


def vehicle_for_tag(id_tag: str) -> str | None:
    """The vehicle id a walk-in idTag is billed to, or None when it cannot be one."""
    return id_tag if _VEHICLE_ID_RE.match(id_tag) else None


def reserve_refusal(status: str | None) -> str | None:
    """The ``ack`` error for a ReserveNow answer (None: held). ``Occupied`` means the
    charger is in use (``point_busy``); ``Faulted``, ``Unavailable``, ``Rejected`` or no
    answer mean it cannot hold (``point_unavailable``). The broker refuses the driver's
    ``reserva`` with the code before the colon."""
    if status == "Accepted":
        return None
    if status == "Occupied":
        return "point_busy: the charger is occupied"
    return f"point_unavailable: ReserveNow answered {status or 'nothing'}"


def configuration(meter_interval_s: int) -> list[tuple[str, str]]:
    """The 1.6 configuration keys the gateway sets at every BootNotification: periodic
    meter values of the energy register (target stops and fault bills depend on them)."""
    return [
        ("MeterValueSampleInterval", str(meter_interval_s)),
        ("MeterValuesSampledData", ENERGY_MEASURAND),
    ]


# --- the calls the gateway makes (same names and meaning in mapping201) ------------------


def reserve_now(connector: int, expiry: str, tag: str, reservation_id: int) -> call.ReserveNow:
    return call.ReserveNow(
        connector_id=connector, expiry_date=expiry, id_tag=tag, reservation_id=reservation_id
    )


def cancel_reservation(reservation_id: int) -> call.CancelReservation:
    return call.CancelReservation(reservation_id=reservation_id)


def remote_start(tag: str, connector: int, remote_start_id: int) -> call.RemoteStartTransaction:
    del remote_start_id  # 1.6 matches the StartTransaction by idTag alone
    return call.RemoteStartTransaction(id_tag=tag, connector_id=connector)


def remote_stop(transaction_id: int | str) -> call.RemoteStopTransaction:
    return call.RemoteStopTransaction(transaction_id=int(transaction_id))


def change_availability(connector: int, operative: bool) -> call.ChangeAvailability:
    kind = "Operative" if operative else "Inoperative"
    return call.ChangeAvailability(connector_id=connector, type=kind)


def configuration_calls(meter_interval_s: int) -> list[Any]:
    return [call.ChangeConfiguration(key=k, value=v) for k, v in configuration(meter_interval_s)]


def configuration_refusals(result: Any) -> list[str]:
    """What a ChangeConfiguration answer refused (empty: set)."""
    status = getattr(result, "status", None)
    return [] if status in ("Accepted", "RebootRequired") else [str(status)]
