"""The web console's link to the broker: bus subscribers, event fan-out, operator requests.

Theory of operation
-------------------
Two :class:`broker.consumers.subscriber.Subscriber` instances run in the web process:

* the **live** one starts from a snapshot (the Clone pattern) and feeds every
  later event, in seq order and without gaps, to :class:`ConsoleState`; each
  event is rendered ONCE as a Server-Sent-Events message (the bus event plus
  the changed point's new row) into a ring buffer and handed to every open
  ``/api/events`` stream;
* the **bills** one replays ``charging.completed`` from the start of history
  into an in-memory :class:`broker.consumers.billing.ledger.Ledger` (the billing worker's own
  store), so ``/api/bills`` is the billing ledger, CSV included.

A stream that resumes (``Last-Event-ID``) is served from the ring buffer, or
from the broker's history for anything older, then follows live events; it
registers for live events before reading the buffer, so nothing falls in
between. A client too slow to keep up is disconnected and resumes the same
way. Operator changes (``set_availability``) go to the broker's history port
and return once the resulting event has been applied here, so a read that
follows a change sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import zmq
import zmq.asyncio

from broker.consumers.billing.ledger import Bill, Ledger
from broker.consumers.subscriber import Endpoint, HistoryClient, Subscriber, decode_events
from broker.consumers.web.state import LATEST_EVENTS, ConsoleState
from common.errors import EVError, HistoryRefused, TransportError
from common.messages import MAX_HISTORY_LIMIT, BusEvent

log = logging.getLogger(__name__)

BUFFER_EVENTS: Final = 10_000  # rendered events kept for resuming streams
STREAM_QUEUE: Final = 10_000  # events queued for one stream before it is cut off
ENERGY_REFRESH_S: Final = 5.0  # how often running sessions' energy is read from a snapshot
APPLY_WAIT_S: Final = 5.0

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Rendered:
    """One bus event as an SSE message body (JSON text); ``seq`` -1: a sessions refresh."""

    seq: int
    text: str


class Refused(EVError):
    """The broker refused an operator request (``message`` is its reason)."""

    code = "refused"

    def __init__(self, reason: str, *, forbidden: bool) -> None:
        super().__init__(reason)
        self.forbidden = forbidden  # the console's credential is not an operator's


class _Cut:
    """Marks a stream that fell behind: it ends and the client resumes."""


CUT: Final = _Cut()
Item = Rendered | _Cut


class ConsoleFeed:
    """State, ledger and event fan-out of one web process."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        ctx: zmq.asyncio.Context | None = None,
        energy_refresh_s: float = ENERGY_REFRESH_S,
        configure_socket: Callable[[zmq.Socket[Any]], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.state = ConsoleState()
        self.ledger = Ledger(":memory:")
        self.buffer: deque[Rendered] = deque(maxlen=BUFFER_EVENTS)
        self.streams: set[asyncio.Queue[Item]] = set()
        self.energy_refresh_s = energy_refresh_s
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.asyncio.Context()
        self._configure = configure_socket
        self.live = Subscriber(endpoint, _LiveSink(self), snapshot=True, ctx=self.ctx)
        self.bills = Subscriber(
            endpoint, _BillSink(self), start_seq=0, topics=["charging.completed"], ctx=self.ctx
        )
        self.requests = HistoryClient(
            self.ctx, endpoint.history_url, credential=endpoint.credential
        )
        self._applied = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self.resets = 0

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.live.run(), name="web-live"),
            asyncio.create_task(self._run_bills(), name="web-bills"),
            asyncio.create_task(self._refresh_energy(), name="web-energy"),
        ]

    async def _run_bills(self) -> None:
        """The bills subscriber starts once the live one has caught up: while the broker
        is unreachable one subscriber retries (and logs each retry), not two."""
        await self.live.ready.wait()
        await self.bills.run()

    @property
    def ready(self) -> bool:
        return self.live.ready.is_set()

    async def wait_ready(self) -> None:
        await self.live.ready.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for q in list(self.streams):
            _offer(q, CUT)
        self.requests.close()
        self.ledger.close()
        if self._own_ctx:
            self.ctx.destroy(linger=0)

    # --- live events ----------------------------------------------------------------

    def on_snapshot(self, snap: dict[str, Any]) -> None:
        self.state.load_snapshot(snap, time.time())
        if self.buffer:  # a re-snapshot: streams cannot be continued event by event
            self.resets += 1
            self.buffer.clear()
            for q in list(self.streams):
                _offer(q, CUT)

    def on_events(self, events: Sequence[BusEvent]) -> None:
        now = time.time()
        for ev in events:
            row = self.state.apply(ev)
            extra: dict[str, Any] = {}
            if row is not None:
                extra["point"] = row
            if self.state.retariffed:  # tariff.updated: the points whose tarifa changed
                extra["points"] = list(self.state.retariffed)
            if ev.topic.startswith("charging."):
                if ev.topic == "charging.completed":
                    self._bill(ev, now)
                extra["sessions"] = self.state.sessions()
                extra["stats"] = self.state.stats(now)
            item = Rendered(ev.seq, render(ev, extra))
            self.buffer.append(item)
            for q in list(self.streams):
                if not _offer(q, item):
                    self.streams.discard(q)
                    _offer(q, CUT, force=True)
        self._notify()

    def _bill(self, ev: BusEvent, now: float) -> None:
        try:
            bill = Bill.from_event(ev.data)
        except ValueError as exc:
            log.error("seq %d: charging.completed not billable: %s", ev.seq, exc)
            return
        self.ledger.apply([(ev.seq, bill)], 0)
        self.state.add_bill(bill, now)

    def on_bills(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        now = time.time()
        for ev in events:
            self._bill(ev, now)

    def _notify(self) -> None:
        async def wake() -> None:
            async with self._applied:
                self._applied.notify_all()

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(wake())

    async def wait_applied(self, seq: int, timeout: float = APPLY_WAIT_S) -> bool:
        """Wait until the event ``seq`` has been applied here; False on timeout."""

        async def until() -> None:
            async with self._applied:
                await self._applied.wait_for(lambda: self.state.seq >= seq)

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            return False
        return True

    # --- streams --------------------------------------------------------------------

    async def stream(self, after: int | None) -> AsyncIterator[Rendered]:
        """Events with seq > ``after`` (only new ones when None), then live, until cut."""
        q: asyncio.Queue[Item] = asyncio.Queue(STREAM_QUEUE)
        self.streams.add(q)
        try:
            last = after if after is not None else self.state.seq
            if after is not None:
                buffered = list(self.buffer)
                first = buffered[0].seq if buffered else self.state.seq + 1
                if last + 1 < first:
                    async for item in self._from_history(last, first - 1):
                        yield item
                        last = item.seq
                for item in buffered:
                    if item.seq > last:
                        yield item
                        last = item.seq
            while True:
                got = await q.get()
                if isinstance(got, _Cut):
                    return
                if got.seq < 0:  # not a bus event: a refresh of the running sessions
                    yield got
                elif got.seq > last:
                    yield got
                    last = got.seq
        finally:
            self.streams.discard(q)

    async def _from_history(self, after: int, upto: int) -> AsyncIterator[Rendered]:
        seq = after
        while seq < upto:
            reply = await self.requests.request_once(
                {"op": "since", "seq": seq, "limit": MAX_HISTORY_LIMIT}
            )
            events = decode_events(reply.get("events"), self.live.stats)
            for ev in events:
                if ev.seq > upto:
                    return
                yield Rendered(ev.seq, render(ev, {}))
                seq = ev.seq
            if not reply.get("more") or not events:
                return

    # --- operator requests ----------------------------------------------------------

    async def set_availability(self, point_id: str, available: bool, reason: str) -> int:
        """Ask the broker; returns the seq of the resulting event (applied here by then)."""
        request = {
            "op": "set_availability",
            "point_id": point_id,
            "available": available,
            "reason": reason,
        }
        try:
            reply = await self.requests.request_once(request)
        except HistoryRefused as exc:
            raise Refused(exc.reason, forbidden=exc.forbidden) from exc
        seq = int(reply.get("seq") or 0)
        await self.wait_applied(seq)
        return seq

    # --- energy so far --------------------------------------------------------------

    async def _recent_events(self) -> None:
        """The latest events before the snapshot, for the page's list (best effort)."""
        upto = self.state.seq
        try:
            reply = await self.requests.request_once(
                {"op": "since", "seq": max(0, upto - LATEST_EVENTS), "limit": LATEST_EVENTS}
            )
        except TransportError as exc:
            log.info("latest events: %s", exc)
            return
        events = decode_events(reply.get("events"), self.live.stats)
        self.state.add_past([ev for ev in events if ev.seq <= upto])

    async def _refresh_energy(self) -> None:
        """Running sessions' energy comes only with snapshots: read one now and then."""
        await self.live.ready.wait()
        await self._recent_events()
        while True:
            await asyncio.sleep(self.energy_refresh_s)
            if not self.state.running:
                continue
            try:
                snap = await self.requests.request_once({"op": "snapshot"})
            except TransportError as exc:
                log.info("energy refresh: %s", exc)
                continue
            changed = self.state.refresh_energy(snap)
            if changed:
                text = _encode({"sessions": self.state.sessions()}).decode()
                item = Rendered(-1, text)
                for q in list(self.streams):
                    _offer(q, item)


def render(ev: BusEvent, extra: dict[str, Any]) -> str:
    """An SSE message body: the bus event's fields, then the console's view of its effect."""
    return _encode(
        {"seq": ev.seq, "ts": ev.ts, "topic": ev.topic, "data": ev.data, **extra}
    ).decode()


def _offer(q: asyncio.Queue[Item], item: Item, *, force: bool = False) -> bool:
    try:
        q.put_nowait(item)
    except asyncio.QueueFull:
        if not force:
            return False
        with contextlib.suppress(asyncio.QueueEmpty):
            q.get_nowait()
        q.put_nowait(item)
    return True


class _LiveSink:
    def __init__(self, feed: ConsoleFeed) -> None:
        self.feed = feed

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.feed.on_snapshot(snapshot)

    def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        self.feed.on_events(events)


class _BillSink:
    def __init__(self, feed: ConsoleFeed) -> None:
        self.feed = feed

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        return None

    def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        self.feed.on_bills(events, applied_seq)
