"""Runs the OCPI interface: the service (subscribers, outbox) and uvicorn in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Generator
from typing import Final

import uvicorn

from broker.consumers.ocpi.app import build
from broker.consumers.ocpi.service import OcpiConfig, OcpiService

MAX_CONNECTIONS: Final = 256
SHUTDOWN_S: Final = 1


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers (the command owns SIGINT/SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(
    cfg: OcpiConfig, host: str, port: int, stop: asyncio.Event, on_ready: Callable[[int], None]
) -> None:
    """Serve until ``stop`` is set; ``on_ready(port)`` once listening and caught up."""
    svc = OcpiService(cfg)
    server = _Server(
        uvicorn.Config(
            build(svc),
            host=host,
            port=port,
            lifespan="off",
            log_level="warning",
            access_log=False,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_graceful_shutdown=SHUTDOWN_S,
            h11_max_incomplete_event_size=8 * 1024,
        )
    )
    await svc.start()
    task = asyncio.create_task(server.serve(), name="ocpi-http")
    try:
        while not server.started:
            if task.done():
                with contextlib.suppress(SystemExit):
                    await task
                raise OSError(f"cannot listen on {host}:{port}")
            await asyncio.sleep(0.02)
        await svc.wait_ready()
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        if not cfg.public_url:
            shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
            svc.cfg = dataclasses.replace(cfg, public_url=f"http://{shown}:{bound}")
        on_ready(int(bound))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, SHUTDOWN_S + 1)
        await svc.close()
