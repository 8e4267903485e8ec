"""Timestamps on the wire: ISO 8601 text <-> epoch seconds (float, UTC).

The original client sends ``2006-01-02T15:04:05`` with no zone; such naive
timestamps are read as UTC. Zoned forms (``Z``, ``+03:00``) are honoured.
The broker writes ``YYYY-MM-DDTHH:MM:SS.mmmZ``.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common.errors import ConfigError


def parse_timestamp(text: str) -> float:
    """Epoch seconds for an ISO 8601 timestamp; raises ValueError when it is not one."""
    if not isinstance(text, str) or not text:
        raise ValueError("timestamp must be a non-empty ISO 8601 string")
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def format_timestamp(epoch: float) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC, milliseconds) for epoch seconds.

    Raises ValueError when ``epoch`` is not a representable time (NaN, out of range).
    """
    try:
        dt = datetime.fromtimestamp(epoch, tz=UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"timestamp out of range: {epoch!r}") from exc
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def site_zone(name: str | None) -> tzinfo:
    """The zone named ``name`` (IANA), or the machine's local zone when None.

    Raises :class:`common.errors.ConfigError` for an unknown name.
    """
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown time zone {name!r} (an IANA name is expected)") from None
    env = os.environ.get("TZ", "").lstrip(":")
    if env:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError, OSError):
            return ZoneInfo(env)
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return UTC
