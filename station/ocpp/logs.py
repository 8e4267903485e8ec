"""Throttled warnings: a misbehaving charger (or ten thousand of them) cannot flood the
log. One line per charger and kind every 10 s; the next line says how many were held
back."""

from __future__ import annotations

import logging
import time
from typing import Any

from station.ocpp.frames import Throttle

log = logging.getLogger("station.ocpp")
_throttle = Throttle(period_s=10.0)


def warn(charger: str, kind: str, msg: str, *args: Any) -> None:
    held = _throttle.allow(f"{charger}\0{kind}", time.monotonic())
    if held is None:
        return
    if held:
        log.warning(msg + " (%d similar lines held back)", *args, held)
    else:
        log.warning(msg, *args)
