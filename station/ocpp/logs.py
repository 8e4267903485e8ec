"""Throttled warnings: a misbehaving charger (or ten thousand of them) cannot flood the
log. One line per charger and kind every 10 s, and at most 20 lines of one kind every
10 s for all chargers together (a reconnect storm of 10,000 chargers writes 20 lines,
not 10,000); the next line says how many were held back."""

from __future__ import annotations

import logging
import time
from typing import Any

from station.ocpp.frames import Throttle

log = logging.getLogger("station.ocpp")
_per_charger = Throttle(period_s=10.0)
_per_kind = Throttle(period_s=10.0, burst=20)


def warn(charger: str, kind: str, msg: str, *args: Any) -> None:
    now = time.monotonic()
    mine = _per_charger.allow(f"{charger}\0{kind}", now)
    if mine is None:
        return
    everyone = _per_kind.allow(kind, now)
    if everyone is None:
        return
    held = mine + everyone
    if held:
        log.warning(msg + " (%d similar lines held back)", *args, held)
    else:
        log.warning(msg, *args)
