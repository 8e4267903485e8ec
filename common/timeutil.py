"""Timestamps on the wire: ISO 8601 text <-> epoch seconds (float, UTC).

The original client sends ``2006-01-02T15:04:05`` with no zone; such naive
timestamps are read as UTC. Zoned forms (``Z``, ``+03:00``) are honoured.
The broker writes ``YYYY-MM-DDTHH:MM:SS.mmmZ``.
"""

from __future__ import annotations

from datetime import UTC, datetime


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
