"""Runs the web console: the feed, the application and uvicorn in one event loop.

uvicorn's own signal handling is switched off: the command that calls
:func:`serve` owns SIGINT/SIGTERM and sets ``stop``, and the server then
closes its connections (open event streams included) and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Final

import uvicorn

from broker.consumers.subscriber import Endpoint
from broker.consumers.web.app import DEFAULT_TILES, build
from broker.consumers.web.feed import ConsoleFeed
from broker.consumers.web.guard import ConnectionGuard, guarded_protocol
from common.ports import WEB_PORT

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 64  # security.md: HTTP connections
SHUTDOWN_S: Final = 1


@dataclass(frozen=True, slots=True)
class WebConfig:
    endpoint: Endpoint
    host: str = "127.0.0.1"
    port: int = WEB_PORT
    token: str = ""
    tiles: str = DEFAULT_TILES
    #: origins besides the console's own allowed to make state-changing requests
    allowed_origins: tuple[str, ...] = ()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers (the caller owns them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def console_url(host: str, port: int, token: str | None) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


async def serve(
    cfg: WebConfig,
    stop: asyncio.Event,
    on_ready: Callable[[int], None],
    feed: ConsoleFeed | None = None,
) -> None:
    """Serve until ``stop`` is set; ``on_ready(port)`` once listening and caught up."""
    feed = feed or ConsoleFeed(cfg.endpoint)
    guard = ConnectionGuard()
    server = _Server(
        uvicorn.Config(
            build(
                feed, cfg.token, tiles=cfg.tiles, allowed_origins=cfg.allowed_origins, guard=guard
            ),
            http=guarded_protocol(guard),
            host=cfg.host,
            port=cfg.port,
            lifespan="off",
            log_level="warning",
            access_log=False,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_graceful_shutdown=SHUTDOWN_S,
            h11_max_incomplete_event_size=8 * 1024,
        )
    )
    await feed.start()
    task = asyncio.create_task(server.serve(), name="web-http")
    waiter = asyncio.create_task(stop.wait())
    try:
        while not server.started:
            if task.done():
                with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind
                    await task
                raise OSError(f"cannot listen on {cfg.host}:{cfg.port}")
            if stop.is_set():
                return
            await asyncio.sleep(0.02)
        # caught up with the broker, or stopped while it is unreachable (the feed retries)
        ready = asyncio.create_task(feed.wait_ready())
        await asyncio.wait({ready, waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            return
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else cfg.port
        on_ready(int(port))
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        server.should_exit = True
        await feed.close()  # ends open event streams
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, SHUTDOWN_S + 1)
