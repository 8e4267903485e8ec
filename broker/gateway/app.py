"""One vehicle gateway process: replica + core link + vehicle edge.

Start order: the replica's subscriber (snapshot, then events), the link to
the core, then the vehicle port (``SO_REUSEPORT``: the gateways of one host
share it). Reads wait for nothing but the replica; until its first snapshot
they are forwarded to the core like every other request.

A gateway started by ``ev-broker serve --gateways N`` is told its parent's pid
(``parent_pid``): when that process is gone, the gateway stops taking new
connections (a new ``serve`` has its own gateways), keeps serving the ones it
holds through the restarted core, and exits once the last one has closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Final

import zmq.asyncio

from broker.consumers.subscriber import Endpoint, Subscriber
from broker.core.effects import Persist, Reply
from broker.core.vehicle_auth import AuthMode, VehicleAuth
from broker.edges.reply_order import Slot
from broker.gateway.link import CoreLink
from broker.gateway.replica import Replica
from broker.gateway.server import GatewayServer
from broker.limits import Limits
from broker.metrics import BrokerMetrics
from common.credentials import Credential
from common.messages import VehicleRequest
from common.oslimits import raise_nofile_limit

log = logging.getLogger(__name__)

PARENT_CHECK_S: Final = 1.0
READY_WAIT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    core: str = "127.0.0.1"
    host: str = "0.0.0.0"
    vehicle_port: int = 8081
    events_port: int = 5556
    history_port: int = 5557
    gateway_port: int = 5558
    core_wait_s: float = 10.0
    credential: Credential | None = None
    limits: Limits = field(default_factory=Limits)
    parent_pid: int | None = None
    name: str | None = None


class _NoCore:
    """The vehicle edge's sink, never called in a gateway (requests go to the link)."""

    def vehicle_request(
        self,
        conn: int,
        vehicle_id: str,
        request: VehicleRequest,
        slot: Slot,
        address: str | None = None,
    ) -> None:
        raise RuntimeError("a gateway forwards requests to the core")

    def vehicle_record_reply(self, persist: Persist, reply: Reply, slot: Slot) -> None:
        raise RuntimeError("a gateway forwards requests to the core")

    def vehicle_connected(self, vehicle_id: str) -> None:
        return None

    def vehicle_disconnected(self, vehicle_id: str) -> None:
        return None


class GatewayApp:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.gateway_id = config.name or f"gw-{uuid.uuid4().hex[:10]}"
        self.metrics = BrokerMetrics()
        self.replica = Replica()
        self.server = GatewayServer(
            _NoCore(), self.metrics, VehicleAuth(AuthMode.OPEN, str), config.limits
        )
        self.ctx: zmq.asyncio.Context | None = None
        self.link: CoreLink | None = None
        self.subscriber: Subscriber | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stop_requested = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        raise_nofile_limit()
        self.ctx = zmq.asyncio.Context()
        endpoint = Endpoint(cfg.core, cfg.events_port, cfg.history_port, cfg.credential)
        self.subscriber = Subscriber(
            endpoint, self.replica, snapshot=True, idle_poll_s=1.0, ctx=self.ctx
        )
        self._tasks.append(asyncio.create_task(self.subscriber.run(), name="replica"))
        self.link = CoreLink(
            self.ctx,
            f"tcp://{cfg.core}:{cfg.gateway_port}",
            self.gateway_id,
            cfg.core_wait_s,
            cfg.credential,
        )
        self.server.setup(self.link, self.replica)
        await self.link.start(self.server)
        await self.server.start(cfg.host, cfg.vehicle_port, reuse_port=True)
        # ready once the core greeted it and the replica holds a snapshot (a gateway
        # started before its core is ready without them, after READY_WAIT_S)
        deadline = time.monotonic() + READY_WAIT_S
        while time.monotonic() < deadline and not (self.link.boot and self.replica.ready):
            await asyncio.sleep(0.02)
        gc.freeze()  # the replica lives as long as the process: out of GC passes
        if cfg.parent_pid is not None:
            self._tasks.append(asyncio.create_task(self._watch_parent(cfg.parent_pid)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.server.close()
        for _ in range(3):  # connection_lost callbacks (Closed to the core)
            await asyncio.sleep(0)
        if self.link is not None:
            await self.link.close()
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
            self.ctx = None

    async def _watch_parent(self, parent: int) -> None:
        while os.getppid() == parent:
            await asyncio.sleep(PARENT_CHECK_S)
        log.warning(
            "gateway %s: its serve process is gone; serving the last connections", self.gateway_id
        )
        listener = self.server._server
        if listener is not None:
            listener.close()
        while self.server.conns:
            await asyncio.sleep(PARENT_CHECK_S)
        self.stop_requested.set()

    def describe(self) -> str:
        c = self.config
        return (
            f"gateway {self.gateway_id}: vehicles tcp {c.host}:{self.server.port}, "
            f"core {c.core} (gateways {c.gateway_port}, events {c.events_port}, "
            f"history {c.history_port}), core wait {c.core_wait_s:g} s, "
            f"auth {'curve' if c.credential else 'OFF'}"
        )


async def serve(config: GatewayConfig, on_ready: object, stop: asyncio.Event | None = None) -> int:
    app = GatewayApp(config)
    try:
        await app.start()
        if callable(on_ready):
            on_ready(app.describe())
        waits = [asyncio.ensure_future(app.stop_requested.wait())]
        if stop is not None:
            waits.append(asyncio.ensure_future(stop.wait()))
        _done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
    finally:
        await app.close()
    return 0
