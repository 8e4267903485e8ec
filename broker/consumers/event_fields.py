"""Reading snapshot entries and bus event data as the consumers' views need them.

The monitor (:mod:`broker.consumers.monitor.view`) and the web console
(:mod:`broker.consumers.web.state`) read the same loosely typed maps: a point's id may be
under ``point_id``, ``id_ponto_recarga`` or ``id``, a queue entry is a vehicle
id or a map holding one, a figure must be a number (never a bool) and a time
is epoch seconds or ISO-8601 text. Each reader answers None for what is
missing or of the wrong type, so a malformed field never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.timeutil import parse_timestamp

__all__ = ["epoch", "number", "point_id", "vehicle_id"]


def point_id(data: Mapping[str, Any]) -> str | None:
    """The point's id under any of its names; None without a non-empty one."""
    for key in ("point_id", "id_ponto_recarga", "id"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def vehicle_id(entry: Any) -> str | None:
    """A queue entry's vehicle id: the entry itself when text, else its id field."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping):
        for key in ("vehicle_id", "id_veiculo"):
            value = entry.get(key)
            if isinstance(value, str):
                return value
    return None


def number(value: Any) -> float | None:
    """``value`` as a float when it is an int or a float (not a bool)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def epoch(value: Any) -> float | None:
    """Epoch seconds from a number or from ISO-8601 text; None otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return parse_timestamp(value)
        except ValueError:
            return None
    return None
