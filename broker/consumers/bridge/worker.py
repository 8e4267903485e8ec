"""The bridge: one region's bus, in order and exactly once, into a JetStream stream.

Theory of operation
-------------------
The bridge is a bus consumer (:class:`broker.consumers.subscriber.Subscriber`) of every
topic. Each batch it receives is published to ``evcharge.<region>.<topic>``
with ``Nats-Msg-Id: <region>:<seq>``, pipelined, and the batch is done only
when JetStream has acknowledged every message of it; only then does the
subscriber hand over more events.

The NATS connection never reconnects by itself (``allow_reconnect=False``):
after any failure (server gone, an ack missing or refused) the connection is
dropped and everything starts again. Because one connection is one ordered
byte stream, the server has stored a *prefix* of what was sent on it, so the
last message of the region in the stream tells exactly where to resume: the
bridge reads its ``<region>:<seq>`` id and catches up from the broker's
history above that seq. A message stored twice (resent inside the duplicate
window) is dropped by JetStream through its id. So whatever is killed when -
the bridge, the broker or NATS - the stream holds the region's seq 1..N once,
in order, without a gap (as long as the broker's history still holds the range).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from nats.js import JetStreamContext

from broker.consumers.bridge import jetstream
from broker.consumers.subscriber import Endpoint, Subscriber
from common.codec import encode_event
from common.errors import TransportError
from common.messages import BusEvent

log = logging.getLogger(__name__)

ACK_TIMEOUT_S: Final = 10.0  # a batch not acknowledged by then: start again


@dataclass
class BridgeStats:
    published: int = 0  # messages acknowledged as new
    duplicates: int = 0  # messages JetStream already had (dropped by their id)
    last_seq: int = 0  # the region's last seq known to be in the stream
    restarts: int = 0  # connections dropped and started again
    started_at: float = field(default_factory=time.monotonic)


@dataclass
class BridgeConfig:
    endpoint: Endpoint
    nats_url: str
    region: str
    stream: str = jetstream.DEFAULT_STREAM
    replicas: int = 1
    subscriber_options: dict[str, Any] = field(default_factory=dict)


class BridgeSink:
    """Publishes each batch to JetStream and returns once all of it is acknowledged."""

    def __init__(self, js: JetStreamContext, region: str, stats: BridgeStats) -> None:
        self.js = js
        self.region = region
        self.stats = stats

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:  # not used: seq mode
        return None

    async def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        if not events:
            return
        futures = []
        for ev in events:
            futures.append(
                await self.js.publish_async(
                    jetstream.subject(self.region, ev.topic),
                    encode_event(ev)[1],
                    headers={jetstream.MSG_ID: jetstream.msg_id(self.region, ev.seq)},
                )
            )
        try:
            acks = await asyncio.wait_for(asyncio.gather(*futures), ACK_TIMEOUT_S)
        except jetstream.NATS_ERRORS as exc:
            for f in futures:
                f.cancel()
            raise TransportError(f"JetStream did not store the batch: {exc!r}") from exc
        for ack in acks:
            if ack.duplicate:
                self.stats.duplicates += 1
            else:
                self.stats.published += 1
        self.stats.last_seq = events[-1].seq


class Bridge:
    """Runs the bridge until stopped, starting again after every failure."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.stats = BridgeStats()
        self.ready = asyncio.Event()  # set at the first successful resume
        self.resumed_from: int | None = None

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection: resume after the stream's last seq, follow until a failure."""
        cfg = self.config
        name = f"evcharge-bridge-{cfg.region}"
        async with jetstream.session_connection(cfg.nats_url, name) as (nc, closed):
            js = nc.jetstream()
            await jetstream.ensure_stream(js, cfg.stream, cfg.replicas)
            last = await jetstream.last_published_seq(js, cfg.stream, cfg.region)
            self.stats.last_seq = last
            self.resumed_from = last
            log.info("region %s: stream %s holds seq 1..%d", cfg.region, cfg.stream, last)
            sink = BridgeSink(js, cfg.region, self.stats)
            sub = Subscriber(cfg.endpoint, sink, start_seq=last, **cfg.subscriber_options)
            self.ready.set()
            await _race(sub.run(), stop, closed)
            if closed.is_set() and not stop.is_set():
                raise TransportError("NATS connection lost")

    async def run(self, stop: asyncio.Event) -> None:
        what = f"bridge {self.config.region}"
        await jetstream.run_sessions(self._session, stop, self.stats, log, what)


async def _race(work: Any, stop: asyncio.Event, closed: asyncio.Event) -> None:
    """Run ``work`` until it ends (its exception propagates), ``stop`` or ``closed``."""
    task = asyncio.ensure_future(work)
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(closed.wait())}
    try:
        await asyncio.wait({task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
