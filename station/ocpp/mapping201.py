"""Pure rules between OCPP 2.0.1 and the station protocol (no I/O, no clock).

The same rules as :mod:`station.ocpp.mapping` (1.6J), in 2.0.1's words: an EVSE
instead of a connector id, idTokens, TransactionEvent instead of Start/Stop
transactions, device-model variables instead of configuration keys. Each function
of the version-neutral set (``reserve_now``, ``cancel_reservation``,
``remote_start``, ``remote_stop``, ``change_availability``, ``configuration_calls``,
``configuration_refusals``) has the same name and meaning in
:mod:`station.ocpp.mapping`; power limits are :mod:`station.ocpp.profiles`.
Every rule is stated in docs/ocpp.md.
"""

from __future__ import annotations

import math
from typing import Any, Final

from ocpp.v201 import call

from station.ocpp.mapping import ENERGY_MEASURAND, SOC_MEASURAND

VERSION: Final = "2.0.1"
SUBPROTOCOL: Final = "ocpp2.0.1"
CONNECTOR: Final = 1  # the connector of an EVSE a point is (one connector per EVSE)

# ConnectorStatus -> the 1.6 status with the same meaning (one table of estados)
STATUS_AS_16: Final[dict[str, str]] = {
    "Available": "Available",
    "Occupied": "Preparing",  # a plug is in; our own session shows carregando anyway
    "Reserved": "Reserved",
    "Unavailable": "Unavailable",
    "Faulted": "Faulted",
}

# stoppedReason values that mean the charger, not a person, ended the transaction
FAULT_REASONS: Final = frozenset(
    {
        "EmergencyStop",
        "GroundFault",
        "ImmediateReset",
        "OvercurrentFault",
        "PowerLoss",
        "PowerQuality",
        "Reboot",
    }
)

# (component, variable) set at every BootNotification: periodic energy readings
SAMPLING: Final = (
    ("SampledDataCtrlr", "TxUpdatedInterval"),
    ("SampledDataCtrlr", "TxUpdatedMeasurands"),
)


def status_as_16(connector_status: str) -> str:
    return STATUS_AS_16.get(connector_status, "Unavailable")


def stop_reason_as_16(stopped_reason: str | None) -> str | None:
    """A fault reason keeps a name 1.6 counts as a fault; the rest are not faults."""
    if stopped_reason in FAULT_REASONS:
        return "PowerLoss"
    return stopped_reason


def id_token(tag: str, kind: str = "Central") -> dict[str, str]:
    return {"id_token": tag, "type": kind}


def reserve_now(evse: int, expiry: str, tag: str, reservation_id: int) -> call.ReserveNow:
    return call.ReserveNow(
        id=reservation_id, expiry_date_time=expiry, id_token=id_token(tag), evse_id=evse
    )


def cancel_reservation(reservation_id: int) -> call.CancelReservation:
    return call.CancelReservation(reservation_id=reservation_id)


def remote_start(tag: str, evse: int, remote_start_id: int) -> call.RequestStartTransaction:
    return call.RequestStartTransaction(
        id_token=id_token(tag), remote_start_id=remote_start_id, evse_id=evse
    )


def remote_stop(transaction_id: int | str) -> call.RequestStopTransaction:
    return call.RequestStopTransaction(transaction_id=str(transaction_id))


def change_availability(evse: int, operative: bool) -> call.ChangeAvailability:
    status = "Operative" if operative else "Inoperative"
    return call.ChangeAvailability(operational_status=status, evse={"id": evse})


def configuration_calls(meter_interval_s: int) -> list[Any]:
    """SetVariables of the sampling the mapping needs, then GetVariables to read it back."""
    values = (str(meter_interval_s), ENERGY_MEASURAND)
    data = [
        {"attribute_value": v, "component": {"name": c}, "variable": {"name": n}}
        for (c, n), v in zip(SAMPLING, values, strict=True)
    ]
    read = [{"component": {"name": c}, "variable": {"name": n}} for c, n in SAMPLING]
    return [call.SetVariables(set_variable_data=data), call.GetVariables(get_variable_data=read)]


def configuration_refusals(result: Any) -> list[str]:
    """What a SetVariables/GetVariables answer refused (empty: all set)."""
    if result is None:
        return ["no answer"]
    rows = getattr(result, "set_variable_result", None) or getattr(
        result, "get_variable_result", None
    )
    bad = []
    for row in rows or []:
        status = row.get("attribute_status")
        if status not in ("Accepted", "RebootRequired"):
            bad.append(f"{row.get('variable', {}).get('name')}: {status}")
    return bad


def trigger_status(evse: int) -> call.TriggerMessage:
    return call.TriggerMessage(
        requested_message="StatusNotification", evse={"id": evse, "connector_id": CONNECTOR}
    )


def meter_reading(meter_value: Any) -> tuple[int | None, float | None]:
    """The latest register reading (Wh) and state of charge (%) in a 2.0.1 meterValue
    list: ``Energy.Active.Import.Register`` (the default measurand) without a phase,
    ``unitOfMeasure`` ``Wh`` (default) or ``kWh`` with its power-of-ten multiplier."""
    wh: int | None = None
    soc: float | None = None
    if not isinstance(meter_value, list):
        return None, None
    for mv in meter_value:
        samples = mv.get("sampled_value") if isinstance(mv, dict) else None
        for sv in samples if isinstance(samples, list) else []:
            if not isinstance(sv, dict):
                continue
            value = sv.get("value")
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            measurand = sv.get("measurand") or ENERGY_MEASURAND
            if measurand == ENERGY_MEASURAND and not sv.get("phase"):
                unit = sv.get("unit_of_measure") or {}
                scale = {"Wh": 1.0, "kWh": 1000.0}.get(unit.get("unit") or "Wh")
                multiplier = unit.get("multiplier") or 0
                if scale is not None and isinstance(multiplier, int) and -3 <= multiplier <= 6:
                    wh = round(value * scale * 10.0**multiplier)
            elif measurand == SOC_MEASURAND and 0.0 <= value <= 100.0:
                soc = float(value)
    return wh, soc
