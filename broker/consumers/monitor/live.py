"""``ev-broker monitor``: the live terminal view (rich.live) over the bus.

The view is built from a snapshot then events (Clone pattern, through the
shared :class:`broker.consumers.subscriber.Subscriber`), so it is right from the first
frame. Keys (when stdin is a terminal): ``n``/space next page, ``p`` previous,
``g``/``G`` first/last page, ``q`` quit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import time
import tty
from collections.abc import Iterator, Sequence
from typing import Any, Final

import zmq.asyncio
from rich.console import Console
from rich.live import Live

from broker.consumers.monitor.view import MonitorView
from broker.consumers.subscriber import Endpoint, HistoryClient, Subscriber
from common.errors import EVError
from common.messages import BusEvent


class MonitorSink:
    """Feeds the view from the subscriber."""

    def __init__(self, view: MonitorView) -> None:
        self.view = view

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.view.load_snapshot(snapshot)

    def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        self.view.apply_all(events, time.time())


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[bool]:
    """Single-key input on a terminal; yields False (and does nothing) otherwise."""
    if not os.isatty(fd):
        yield False
        return
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def handle_key(view: MonitorView, key: str, stop: asyncio.Event) -> None:
    if key in ("q", "Q", "\x03"):
        stop.set()
    elif key in ("n", " ", "j"):
        view.next_page()
    elif key in ("p", "k"):
        view.prev_page()
    elif key == "g":
        view.first_page()
    elif key == "G":
        view.last_page()


HEARD_EVERY_S: Final = 2.0  # how often the "heard" times are refreshed from a snapshot


async def _refresh_heard(sub: Subscriber, view: MonitorView, every_s: float) -> None:
    """Refresh the points' last-heard times from a snapshot every ``every_s`` seconds
    (its own context and socket: the subscriber's requests are not disturbed)."""
    await sub.ready.wait()
    ctx = zmq.asyncio.Context()
    client = HistoryClient(ctx, sub.endpoint.history_url)
    try:
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(EVError):
                view.refresh_heard(await client.request_once({"op": "snapshot"}))
    finally:
        client.close()
        ctx.term()


async def run_monitor(
    endpoint: Endpoint,
    stop: asyncio.Event,
    page_size: int,
    refresh_s: float = 0.25,
    console: Console | None = None,
    heard_every_s: float = HEARD_EVERY_S,
) -> None:
    """Show the view until ``stop`` is set (by a key or a signal)."""
    console = console or Console()
    view = MonitorView(page_size=page_size)
    sub = Subscriber(endpoint, MonitorSink(view), snapshot=True)
    task = asyncio.create_task(sub.run())
    heard: asyncio.Task[None] | None = None
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    with cbreak(fd) if fd >= 0 else contextlib.nullcontext(False) as keys:
        if keys:
            loop.add_reader(
                fd, lambda: handle_key(view, os.read(fd, 1).decode(errors="ignore"), stop)
            )
        try:
            with Live(console=console, auto_refresh=False, screen=console.is_terminal) as live:
                heard = asyncio.create_task(_refresh_heard(sub, view, heard_every_s))
                while not stop.is_set() and not task.done():
                    if sub.ready.is_set():
                        view.figures = {"lag": sub.stats.lag, "gaps": sub.stats.gaps}
                        screen = console.size.height if console.is_terminal else None
                        live.update(view.render(time.time(), screen), refresh=True)
                    else:
                        live.update(f"connecting to {endpoint.history_url} ...", refresh=True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), refresh_s)
        finally:
            if keys:
                loop.remove_reader(fd)
            if heard is not None:
                heard.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heard
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # re-raises what stopped the subscriber, if anything
