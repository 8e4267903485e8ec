"""``ev-broker tail``: print bus events as they arrive, one line each, flushed.

Human-readable lines by default (``#seq time topic key=value ...``), one
compact JSON object per line with ``--json``. A closed pipe (``| head -1``) is
a normal way to stop: the sink raises :class:`PipeClosed` and the command
exits 0 without a traceback.
"""

from __future__ import annotations

import json
import os
import select
import stat
from collections.abc import Sequence
from typing import Any, TextIO

from common.messages import BusEvent
from common.timeutil import format_timestamp


class PipeClosed(Exception):
    """The reader of our stdout went away."""


def _value(v: Any) -> str:
    if isinstance(v, str):
        return v if v and " " not in v and "=" not in v else json.dumps(v, ensure_ascii=False)
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)


def format_human(event: BusEvent) -> str:
    """``#12 2025-04-07T10:00:00.000Z charging.started point_id=CP01 vehicle_id=CAR1``."""
    fields = " ".join(f"{k}={_value(v)}" for k, v in event.data.items())
    return f"#{event.seq} {format_timestamp(event.ts)} {event.topic} {fields}".rstrip()


def format_json(event: BusEvent) -> str:
    return json.dumps(
        {"seq": event.seq, "ts": event.ts, "topic": event.topic, "data": event.data},
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )


def pipe_closed(out: TextIO) -> bool:
    """True when ``out`` is a pipe whose reading end has been closed."""
    try:
        fd = out.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLERR | select.POLLHUP)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError):
        return False


class TailSink:
    """Writes each delivered event as a line on ``out`` and flushes."""

    def __init__(self, out: TextIO, as_json: bool = False) -> None:
        self.out = out
        self.fmt = format_json if as_json else format_human
        self.printed = 0

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        return None

    def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        try:
            for ev in events:
                self.out.write(self.fmt(ev) + "\n")
                self.out.flush()
                self.printed += 1
        except (BrokenPipeError, ValueError) as exc:  # ValueError: file closed
            raise PipeClosed() from exc
