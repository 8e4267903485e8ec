"""Local vehicle gateways of ``ev-broker serve --gateways N``: start, restart, stop.

Each gateway is an ``ev-broker gateway`` child process on the vehicle port
(``SO_REUSEPORT``: the kernel spreads new connections over them). One that
exits while the broker runs is started again after :data:`RESTART_DELAY_S`;
on the way out every one gets SIGTERM, then SIGKILL after :data:`STOP_WAIT_S`.
A child's output goes to the broker's own stdout and stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

RESTART_DELAY_S: Final = 0.5
STOP_WAIT_S: Final = 5.0
READY_WAIT_S: Final = 30.0
READY_PREFIX: Final = b"ev-broker gateway ready"


def auto_gateways(cpus: int | None = None) -> int:
    """What ``--gateways auto`` starts for this machine (docs/performance.md, "Gateways").

    On two cores or fewer a gateway only adds a hop (the core and the gateways
    share the cores): none. Above that, one per core left to the core, at most 8.
    """
    n = cpus if cpus is not None else (os.cpu_count() or 1)
    return 0 if n <= 2 else min(n - 1, 8)


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound (not listening) with SO_REUSEPORT on ``port`` (0: a free one).

    Held while the gateways run, so that port 0 gives all of them one port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, int(sock.getsockname()[1])


class Supervisor:
    """N gateway processes, kept running until :meth:`close`."""

    def __init__(self, count: int, argv: Callable[[], list[str]]) -> None:
        self.count = count
        self._argv = argv
        self._procs: list[asyncio.subprocess.Process | None] = [None] * count
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.returncode is None]

    async def start(self) -> None:
        """Start every gateway and wait until each says it is ready."""
        ready = [asyncio.get_running_loop().create_future() for _ in range(self.count)]
        self._tasks = [
            asyncio.create_task(self._keep(i, ready[i]), name=f"gateway-{i}")
            for i in range(self.count)
        ]
        done, _ = await asyncio.wait(ready, timeout=READY_WAIT_S)
        if len(done) < self.count:
            log.warning("%d of %d gateways not ready yet", self.count - len(done), self.count)

    async def _keep(self, i: int, ready: asyncio.Future[None]) -> None:
        while not self._stopping:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
            )
            self._procs[i] = proc
            log.info("gateway %d started (pid %d)", i, proc.pid)
            assert proc.stdout is not None
            async for line in proc.stdout:
                if line.startswith(READY_PREFIX) and not ready.done():
                    ready.set_result(None)
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            code = await proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            log.warning("gateway %d (pid %d) exited with %d: starting it again", i, proc.pid, code)
            await asyncio.sleep(RESTART_DELAY_S)

    async def close(self) -> None:
        self._stopping = True
        procs = [p for p in self._procs if p is not None and p.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), STOP_WAIT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
