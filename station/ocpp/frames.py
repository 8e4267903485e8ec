"""Pure checks of OCPP-J frames before the ``ocpp`` package unpacks them (no I/O).

OCPP-J answers a Call it cannot process with a CallError naming the Call's unique
id; a frame without a readable unique id (not JSON, not an array, no string id)
or a malformed reply (a CallResult or CallError cannot be answered) can only end
the connection: WebSocket close 1002 (protocol error). The rules, per version,
are in docs/ocpp.md ("Invalid frames").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

Version = Literal["1.6", "2.0.1"]

CALL: Final = 2
CALL_RESULT: Final = 3
CALL_ERROR: Final = 4
CLOSE_PROTOCOL_ERROR: Final = 1002

# the error code for a frame whose shape is wrong ("FormationViolation" is 1.6's spelling)
_FORMAT: Final[dict[Version, str]] = {"1.6": "FormationViolation", "2.0.1": "FormatViolation"}
_TYPE_UNKNOWN: Final[dict[Version, str]] = {
    "1.6": "NotSupported",
    "2.0.1": "MessageTypeNotSupported",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer ``[4, unique_id, code, description, {}]`` (``unique_id`` set), or close the
    connection with ``reason`` (``unique_id`` None)."""

    reason: str
    unique_id: str | None = None
    code: str = ""

    def call_error(self) -> str:
        return json.dumps([CALL_ERROR, self.unique_id, self.code, self.reason[:255], {}])


# the ``ocpp`` package names its errors in 2.0.1's spelling; 1.6 spells two of them otherwise
_SPELLING_16: Final = {
    "FormatViolation": "FormationViolation",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
}


def error_code(code: str, version: Version) -> str:
    """``code`` as ``version`` spells it."""
    return _SPELLING_16.get(code, code) if version == "1.6" else code


def check(raw: str | bytes, version: Version) -> Refusal | None:
    """None for a frame of the right shape (the ``ocpp`` package takes it from there:
    unknown actions and payloads that break the schema get its CallErrors)."""
    if isinstance(raw, bytes):
        return Refusal("binary frames are not OCPP-J")
    try:
        msg: Any = json.loads(raw)
    except ValueError:
        return Refusal("not JSON")
    if not isinstance(msg, list) or not msg:
        return Refusal("not a JSON array")
    kind = msg[0]
    uid = msg[1] if len(msg) > 1 else None
    if not isinstance(uid, str) or not 1 <= len(uid) <= 36:
        return Refusal("no unique id (a string of 1-36 characters)")
    if kind == CALL:
        if len(msg) != 4 or not isinstance(msg[2], str) or not isinstance(msg[3], dict):
            return Refusal("a Call is [2, uniqueId, action, {payload}]", uid, _FORMAT[version])
        return None
    if kind == CALL_RESULT:
        if len(msg) != 3 or not isinstance(msg[2], dict):
            return Refusal("a CallResult is [3, uniqueId, {payload}]")
        return None
    if kind == CALL_ERROR:
        if len(msg) != 5 or not all(isinstance(x, str) for x in msg[2:4]):
            return Refusal("a CallError is [4, uniqueId, code, description, {details}]")
        return None
    return Refusal(f"unknown MessageTypeId {str(kind)[:20]!r}", uid, _TYPE_UNKNOWN[version])


class Throttle:
    """At most ``burst`` log lines per key every ``period_s``; how many were held back."""

    def __init__(self, period_s: float = 10.0, max_keys: int = 10_000, burst: int = 1) -> None:
        self.period_s = period_s
        self.max_keys = max_keys
        self.burst = burst
        self._window: dict[str, tuple[float, int, int]] = {}  # key -> (end, lines, held)

    def allow(self, key: str, now: float) -> int | None:
        """None: stay silent; else the number of lines held back since the last one."""
        end, lines, held = self._window.get(key, (0.0, 0, 0))
        if now >= end:
            if len(self._window) >= self.max_keys:
                self._window.clear()
            self._window[key] = (now + self.period_s, 1, 0)
            return held
        if lines >= self.burst:
            self._window[key] = (end, lines, held + 1)
            return None
        self._window[key] = (end, lines + 1, 0)
        return held
