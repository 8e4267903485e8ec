"""The billing worker's JetStream source: a durable pull consumer over all regions.

Each fetched batch of ``evcharge.<region>.charging.completed`` messages becomes
one ledger transaction; the messages are acknowledged only after it commits.
A worker killed between the commit and the acks gets the batch again, and
the ledger ignores it: its rows are keyed by ``(region, seq)`` (and
``session_id``). A message that cannot be billed (bad id, bad payload, bad
bill) is logged, counted and acknowledged, so it cannot block the consumer.
When the ledger's server cannot be reached (PostgreSQL restarting or cut
off), the batch is given back (negative acks) and the session starts again
after the usual retry wait: the worker keeps running and bills the batch once
the server is back.

Without ``regions`` one durable consumer (``billing``) takes every region;
with ``regions`` each listed region has its own durable consumer
(``billing-<region>``), so workers for disjoint region sets never share one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.consumers.billing.ledger import Bill, Entry, LedgerBase
from broker.consumers.bridge import jetstream
from common.codec import decode_event
from common.errors import ConfigError, EVError, LedgerUnavailable, TransportError

log = logging.getLogger(__name__)

TOPIC: Final = "charging.completed"
FETCH_BATCH: Final = 256
FETCH_WAIT_S: Final = 1.0
#: A batch a worker fetched and never acknowledged (it was killed) is handed out again
#: this long after, so a restarted worker bills it within seconds. The worker commits
#: a batch in milliseconds; a batch taking longer is redelivered and ignored by the
#: ledger (its rows are keyed), never billed twice.
ACK_WAIT_S: Final = 3.0


@dataclass
class JetStreamBillingStats:
    messages: int = 0
    billed: int = 0  # new ledger rows
    replayed: int = 0  # messages whose row was already there (redelivery)
    invalid: int = 0
    batches: int = 0
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)


def consumers(regions: Sequence[str], durable: str) -> list[tuple[str, str]]:
    """(durable name, subject filter) of each consumer the worker reads."""
    if not regions:
        return [(durable, jetstream.region_filter(None, TOPIC))]
    return [(f"{durable}-{r}", jetstream.region_filter(r, TOPIC)) for r in regions]


def entry_of(msg: Msg) -> Entry:
    """The ledger entry a message carries; raises ValueError or EVError naming the fault."""
    region, topic = jetstream.split_subject(msg.subject)
    id_region, seq = jetstream.parse_msg_id((msg.headers or {}).get(jetstream.MSG_ID))
    if id_region != region:
        raise ValueError(f"message id region {id_region!r} differs from subject {region!r}")
    event = decode_event([topic.encode(), msg.data])
    if event.seq != seq:
        raise ValueError(f"event seq {event.seq} differs from message id seq {seq}")
    return Entry(region, seq, Bill.from_event(event.data), published_at=event.ts)


class JetStreamBilling:
    """Fetch, write one transaction, then ack; forever, reconnecting after failures."""

    def __init__(
        self,
        nats_url: str,
        ledger: LedgerBase,
        *,
        stream: str = jetstream.DEFAULT_STREAM,
        regions: Sequence[str] = (),
        durable: str = "billing",
        batch: int = FETCH_BATCH,
        on_billed: Callable[[Sequence[Entry]], None] | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.ledger = ledger
        self.stream = stream
        self.consumers = consumers(regions, durable)
        self.batch = batch
        self.stats = JetStreamBillingStats()
        self.ready = asyncio.Event()
        self.on_billed = on_billed

    def handle(self, msgs: Sequence[Msg]) -> None:
        """Write the bills of ``msgs`` in one transaction (raises StoreError)."""
        entries: list[Entry] = []
        for m in msgs:
            try:
                entries.append(entry_of(m))
            except (ValueError, EVError) as exc:
                self.stats.invalid += 1
                log.error("%s: not billable: %s", m.subject, exc)
        added = self.ledger.write(entries) if entries else 0
        self.stats.messages += len(msgs)
        self.stats.billed += added
        self.stats.replayed += len(entries) - added
        self.stats.batches += 1
        if self.on_billed is not None:
            self.on_billed(entries)

    async def _give_back(self, msgs: Sequence[Msg]) -> None:
        """Negative acks: JetStream hands the batch out again at once, not after the ack
        wait, so the bills are written as soon as the ledger is back."""
        with contextlib.suppress(*jetstream.NATS_ERRORS):
            for m in msgs:
                await m.nak()

    async def _subscribe(self, js: JetStreamContext) -> list[JetStreamContext.PullSubscription]:
        subs = []
        for durable, subject in self.consumers:
            config = ConsumerConfig(
                durable_name=durable,
                filter_subject=subject,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=ACK_WAIT_S,
                max_ack_pending=max(4 * self.batch, 1024),
            )
            try:
                # create or update: a durable made with an older (longer) ack wait gets this one
                await js.add_consumer(self.stream, config)
                sub = await js.pull_subscribe(
                    subject, durable=durable, stream=self.stream, config=config
                )
            except nats.js.errors.BadRequestError as exc:
                raise ConfigError(f"consumer {durable} on {subject}: {exc.description}") from exc
            subs.append(sub)
        return subs

    async def _session(self, stop: asyncio.Event) -> None:
        async with jetstream.session_connection(self.nats_url, "evcharge-billing") as (nc, closed):
            js = nc.jetstream()
            await jetstream.ensure_stream(js, self.stream)
            subs = await self._subscribe(js)
            self.ready.set()
            while not stop.is_set():
                if closed.is_set():
                    raise TransportError("NATS connection lost")
                idle = True
                for sub in subs:
                    try:
                        msgs = await sub.fetch(self.batch, timeout=FETCH_WAIT_S / len(subs))
                    except (nats.errors.TimeoutError, TimeoutError):
                        continue
                    idle = False
                    try:
                        self.handle(msgs)  # the commit ...
                    except LedgerUnavailable as exc:
                        await self._give_back(msgs)
                        raise TransportError(str(exc)) from exc
                    for m in msgs:  # ... then the acks
                        await m.ack()
                    await nc.flush(timeout=max(1, int(ACK_WAIT_S / 3)))
                if idle:
                    await asyncio.sleep(0)

    async def run(self, stop: asyncio.Event) -> None:
        what = f"billing from {self.nats_url}"
        await jetstream.run_sessions(self._session, stop, self.stats, log, what)
