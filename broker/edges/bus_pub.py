"""The event bus edge: a ZeroMQ PUB socket that fans bus events out.

Every event goes out as two frames, ``[topic (UTF-8), payload (msgpack map
{seq, ts, topic, data})]`` (protocol section 4), so subscribers filter by
topic prefix with a plain ZeroMQ subscription.

Publishing never blocks: PUB drops messages for a subscriber whose queue is
full (``SNDHWM``, generous here) instead of waiting, and a subscriber that
notices a gap in ``seq`` fills it from the history ROUTER. Events are already
durable in the store when they are published, so nothing is lost for good.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import zmq
import zmq.asyncio

from broker.edges.zmq_sockets import bind_socket, bound_endpoint
from common.codec import encode_event
from common.messages import BusEvent

log = logging.getLogger(__name__)

#: Events queued per subscriber before PUB drops for that subscriber.
BUS_SNDHWM: Final = 100_000
#: How long close() lets queued events go out, in milliseconds (bounded shutdown).
CLOSE_LINGER_MS: Final = 200


class BusPublisher:
    """PUB socket for bus events."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str) -> None:
        self._ctx = ctx
        self._endpoint = endpoint
        self._sock: zmq.asyncio.Socket | None = None
        self.stats: dict[str, int] = {"published": 0, "dropped": 0}

    @property
    def endpoint(self) -> str:
        """The bound endpoint (with the real port when bound to a wildcard)."""
        return bound_endpoint(self._sock, self._endpoint)

    async def start(self) -> None:
        """Bind the PUB socket; TransportError when it cannot be bound."""
        if self._sock is not None:
            raise RuntimeError("BusPublisher already started")
        self._sock = bind_socket(
            self._ctx,
            zmq.PUB,
            self._endpoint,
            "the event bus PUB",
            {zmq.SNDHWM: BUS_SNDHWM, zmq.LINGER: CLOSE_LINGER_MS},
        )
        log.info("event bus PUB bound on %s", self.endpoint)

    def publish(self, event: BusEvent) -> None:
        """Send ``[topic, payload]`` to every subscriber of a matching prefix; never blocks."""
        sock = self._sock
        if sock is None:
            self.stats["dropped"] += 1
            log.warning("publish of event %d before start or after close: dropped", event.seq)
            return
        fut: asyncio.Future[Any] = sock.send_multipart(  # type: ignore[assignment]
            encode_event(event), flags=zmq.NOBLOCK
        )
        exc = fut.exception() if fut.done() else None
        if exc is None:
            self.stats["published"] += 1
            return
        self.stats["dropped"] += 1
        log.error("publish of event %d failed: %r", event.seq, exc)

    async def close(self) -> None:
        """Close the socket, letting queued events out for at most CLOSE_LINGER_MS."""
        if self._sock is not None:
            self._sock.close(linger=CLOSE_LINGER_MS)
            self._sock = None
