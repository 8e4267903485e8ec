"""Running a program's event loop until its work ends or SIGINT/SIGTERM asks it to stop.

Every long-running command (the broker, the stations, the OCPP gateway and
chargers, the consumers, the vehicle client) runs through :func:`run`: a new
event loop (uvloop when installed, unless the program keeps asyncio's own),
``main(stop)`` run to its end, and its result returned so that the caller can
turn it into an exit code. While ``main`` runs, SIGINT and SIGTERM set ``stop``
and call the program's own stop (``on_stop``, e.g. a ``request_stop`` that
closes what is open), or cancel ``main`` (``cancel=True``: :func:`run` then
raises :class:`Interrupted`). Either way no signal prints a traceback.

:func:`on_stop_signals` lets a part of the work take the signals for a while
(e.g. to stop a load run early and still report its figures); on the way out the
enclosing action gets them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Final, TypeVar

T = TypeVar("T")

#: The signals that ask a program to stop.
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

# The actions of the enclosing on_stop_signals blocks, innermost last.
_actions: list[Callable[[], object]] = []


class Interrupted(Exception):
    """SIGINT/SIGTERM cancelled the work of ``run(..., cancel=True)``: a clean stop."""


def _install(loop: asyncio.AbstractEventLoop, action: Callable[[], object]) -> None:
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, action)


@contextlib.contextmanager
def on_stop_signals(action: Callable[[], object]) -> Iterator[None]:
    """Inside the block (in the running loop), SIGINT/SIGTERM call ``action``.

    On the way out the enclosing block's action takes them again; outside every
    block they are Python's own again (SIGINT raises KeyboardInterrupt).
    """
    loop = asyncio.get_running_loop()
    _install(loop, action)
    _actions.append(action)
    try:
        yield
    finally:
        _actions.remove(action)
        if _actions:
            _install(loop, _actions[-1])
        else:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)


def loop_factory(fast: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when ``fast`` and uvloop is installed, else None (asyncio's own)."""
    if not fast:
        return None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return None
    return uvloop.new_event_loop


def run(
    main: Callable[[asyncio.Event], Awaitable[T]],
    *,
    on_stop: Callable[[], object] | None = None,
    cancel: bool = False,
    fast_loop: bool = True,
) -> T:
    """Run ``main(stop)`` on a new event loop until it returns; its result.

    SIGINT/SIGTERM set ``stop``, then call ``on_stop`` when given, then, with
    ``cancel``, cancel ``main`` (:class:`Interrupted` is raised instead of its
    result). ``fast_loop``: run on uvloop when it is installed.
    """

    async def runner() -> T:
        stop = asyncio.Event()
        task = asyncio.current_task()
        signalled = False

        def action() -> None:
            nonlocal signalled
            signalled = True
            stop.set()
            if on_stop is not None:
                on_stop()
            if cancel and task is not None:
                task.cancel()

        with on_stop_signals(action):
            try:
                return await main(stop)
            except asyncio.CancelledError:
                if cancel and signalled:
                    raise Interrupted from None
                raise

    with asyncio.Runner(loop_factory=loop_factory(fast_loop)) as loop_runner:
        return loop_runner.run(runner())
