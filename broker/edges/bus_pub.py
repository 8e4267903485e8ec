"""The event bus edge: a ZeroMQ PUB socket that fans bus events out.

Every event goes out as two frames, ``[topic (UTF-8), payload (msgpack map
{seq, ts, topic, data})]`` (protocol section 4), so subscribers filter by
topic prefix with a plain ZeroMQ subscription.

Publishing never blocks: PUB drops messages for a subscriber whose queue is
full (``SNDHWM``, generous here) instead of waiting, and a subscriber that
notices a gap in ``seq`` fills it from the history ROUTER. Events are already
durable in the store when they are published, so nothing is lost for good.

With ``security`` the PUB is a CURVE server admitting live ``consumer`` and
``operator`` credentials (ZAP domain ``consumers``). A PUB cannot drop one
subscriber, so when a credential is revoked :meth:`BusPublisher.rebind`
closes the socket and binds a new one: every subscriber reconnects and is
authenticated again, the revoked one is refused, and the others fill the
events they missed meanwhile from history (their gap rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import zmq
import zmq.asyncio

from broker.auth import CONSUMERS_DOMAIN, Security
from broker.edges.zmq_sockets import bind_socket, bound_endpoint, count_handshake_failures
from common.codec import encode_event
from common.errors import TransportError
from common.messages import BusEvent
from common.zmq_nowait import send_nowait

log = logging.getLogger(__name__)

#: Events queued per subscriber before PUB drops for that subscriber.
BUS_SNDHWM: Final = 100_000
#: How long close() lets queued events go out, in milliseconds (bounded shutdown).
CLOSE_LINGER_MS: Final = 200
#: How long a rebind keeps retrying while the old listener is being torn down.
REBIND_FOR_S: Final = 2.0


class BusPublisher:
    """PUB socket for bus events."""

    def __init__(
        self, ctx: zmq.asyncio.Context, endpoint: str, security: Security | None = None
    ) -> None:
        self._ctx = ctx
        self._endpoint = endpoint
        self._security = security
        self._sock: zmq.asyncio.Socket | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.stats: dict[str, int] = {"published": 0, "dropped": 0, "rebinds": 0}

    @property
    def endpoint(self) -> str:
        """The bound endpoint (with the real port when bound to a wildcard)."""
        return bound_endpoint(self._sock, self._endpoint)

    async def start(self) -> None:
        """Bind the PUB socket; TransportError when it cannot be bound."""
        if self._sock is not None:
            raise RuntimeError("BusPublisher already started")
        self._sock = self._bind(self._endpoint)
        log.info("event bus PUB bound on %s", self.endpoint)

    def _bind(self, endpoint: str) -> zmq.asyncio.Socket:
        options: dict[int, int | bytes] = {zmq.SNDHWM: BUS_SNDHWM, zmq.LINGER: CLOSE_LINGER_MS}
        if self._security is not None:
            options.update(self._security.server_options(CONSUMERS_DOMAIN))
        sock = bind_socket(self._ctx, zmq.PUB, endpoint, "the event bus PUB", options)
        if self._security is not None:
            self._monitor = asyncio.get_running_loop().create_task(
                count_handshake_failures(sock, "consumers", self._security.reject),
                name="bus-handshakes",
            )
        return sock

    async def _stop_monitor(self) -> None:
        task, self._monitor = self._monitor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def rebind(self) -> None:
        """Drop every subscriber connection: close the PUB and bind a new one."""
        if self._sock is None:
            return
        endpoint = self.endpoint  # the real port, also when configured as port 0
        await self._stop_monitor()
        self._sock.close(linger=0)
        self._sock = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REBIND_FOR_S
        while True:
            try:
                self._sock = self._bind(endpoint)
                break
            except TransportError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.02)  # the old listener is still being closed
        self.stats["rebinds"] += 1
        log.info("event bus PUB re-bound on %s: subscribers authenticate again", endpoint)

    def publish(self, event: BusEvent) -> None:
        """Send ``[topic, payload]`` to every subscriber of a matching prefix; never blocks."""
        sock = self._sock
        if sock is None:
            self.stats["dropped"] += 1
            log.warning("publish of event %d before start or after close: dropped", event.seq)
            return
        exc = send_nowait(sock, encode_event(event))
        if exc is None:
            self.stats["published"] += 1
            return
        self.stats["dropped"] += 1
        log.error("publish of event %d failed: %r", event.seq, exc)

    async def close(self) -> None:
        """Close the socket, letting queued events out for at most CLOSE_LINGER_MS."""
        await self._stop_monitor()
        if self._sock is not None:
            self._sock.close(linger=CLOSE_LINGER_MS)
            self._sock = None
