"""The one bus subscriber every consumer uses (billing, tail, monitor).

Theory of operation
-------------------
The broker publishes every event on its PUB socket with a ``seq`` that starts
at 1, has no gaps, is shared by all topics and survives restarts; its history
ROUTER replays any range of that log (``since``) and gives a consistent state
(``snapshot``). A consumer wants every event of its topics exactly once, in
order, whatever the network or the broker does. This module does that once:

1. **Subscribe first** (SUB to *every* topic), so nothing published from now on
   is missed by the socket.
2. **Catch up**: either from a sequence number (``start_seq``: history
   ``since`` pages until ``more`` is false) or from a snapshot (the Clone
   pattern: take the snapshot, then apply only events with ``seq`` above it).
   Without either, the first live event fixes the starting point.
3. **Follow live events** with the pure :class:`Sequencer`: a duplicate or old
   event (``seq`` <= applied) is dropped; the next one (applied + 1) is
   applied; a jump is a *gap*: the event is parked and the gap is refilled
   from history, then the parked events follow.
4. **Idle poll**: when nothing arrives for ``idle_poll_s``, history is asked
   for anything above the applied seq (a gap at the tail of the stream, e.g.
   a PUB message dropped just before a quiet period, is found this way).
5. **Reconnect**: ZeroMQ re-connects SUB and DEALER by itself when the broker
   restarts; a history request unanswered in ``request_timeout_s`` gets a new
   DEALER socket and is retried, forever, until stopped. As ``seq`` survives
   broker restarts, steps 3-4 find whatever was published meanwhile.

Topic filtering happens *after* sequencing: the SUB socket takes every topic
and history returns every topic, so a seq jump is always a real gap; events of
other topics only advance the applied seq. Consumers receive batches through
:class:`Sink` (``on_batch(events, applied_seq)``), so a store can write its
rows and the applied seq in one transaction. Figures (lag, gaps, duplicates,
refills) are in :class:`SubscriberStats`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

import zmq
import zmq.asyncio

from common.codec import decode_event, pack, unpack
from common.credentials import Credential, curve_client
from common.errors import EventsPruned, EVError, HistoryRefused, TransportError
from common.messages import MAX_HISTORY_LIMIT, BusEvent
from common.ports import EVENTS_PORT, HISTORY_PORT
from common.zmq_nowait import recv_nowait

log = logging.getLogger(__name__)

IDLE_POLL_S: Final = 2.0
REQUEST_TIMEOUT_S: Final = 2.0
MAX_PARKED: Final = 10_000  # live events kept while a gap is refilled
LIVE_BATCH: Final = 500  # live events handed over in one batch at most


class Sink(Protocol):
    """What a consumer implements to receive sequenced events."""

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        """A consistent state as of ``snapshot["seq"]`` (only in snapshot mode)."""

    def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> Awaitable[None] | None:
        """``events`` (already filtered by topic, in seq order); every event up to
        ``applied_seq`` (of any topic) has now been handled. A sink may return an
        awaitable: the subscriber awaits it before taking more events, and an
        exception raised there ends :meth:`Subscriber.run`."""


@dataclass
class SubscriberStats:
    """Figures of one subscriber; ``lag`` = newest seq known - applied seq."""

    applied_seq: int = 0
    newest_seq: int = 0
    delivered: int = 0
    live: int = 0
    duplicates: int = 0
    gaps: int = 0
    refilled: int = 0
    lost: int = 0
    history_requests: int = 0
    history_timeouts: int = 0
    snapshots: int = 0
    malformed: int = 0
    resets: int = 0  # times the broker's log was found behind the applied seq
    pruned: int = 0  # times history answered that the events asked for were pruned
    last_event_ts: float = 0.0

    @property
    def lag(self) -> int:
        return max(0, self.newest_seq - self.applied_seq)

    @property
    def lag_s(self) -> float:
        """Seconds between now and the publication time of the last applied event."""
        return max(0.0, time.time() - self.last_event_ts) if self.last_event_ts else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lag"] = self.lag
        return out


def topic_matcher(prefixes: Iterable[str]) -> Callable[[str], bool]:
    """A predicate true for topics starting with any prefix (all when there is none)."""
    pre = tuple(p for p in prefixes)
    if not pre or "" in pre:
        return lambda _topic: True
    return lambda topic: topic.startswith(pre)


class Sequencer:
    """Pure ordering logic: duplicates dropped, gaps found, parked events released.

    ``applied`` is the highest seq handed to the consumer (``None`` until known).
    """

    def __init__(self, applied: int | None, stats: SubscriberStats | None = None) -> None:
        self.applied = applied
        self.stats = stats or SubscriberStats()
        self._parked: dict[int, BusEvent] = {}
        if applied is not None:
            self.stats.applied_seq = applied

    def _advance(self, event: BusEvent) -> None:
        self.applied = event.seq
        self.stats.applied_seq = event.seq
        self.stats.last_event_ts = event.ts
        self.stats.newest_seq = max(self.stats.newest_seq, event.seq)

    def offer(self, event: BusEvent) -> tuple[list[BusEvent], bool]:
        """A live event in; returns (events now applicable in order, gap_found)."""
        st = self.stats
        st.newest_seq = max(st.newest_seq, event.seq)
        if self.applied is None:
            self._advance(event)
            return [event], False
        if event.seq <= self.applied or event.seq in self._parked:
            st.duplicates += 1
            return [], False
        if event.seq == self.applied + 1:
            self._advance(event)
            return [event, *self._release()], False
        if len(self._parked) < MAX_PARKED:
            self._parked[event.seq] = event
        gap = True
        return [], gap

    def accept_history(self, events: Iterable[BusEvent]) -> list[BusEvent]:
        """Events from a history page (seq order); returns those to apply, in order.

        History starting above ``applied + 1`` means the broker no longer has
        the missing range: the hole is counted as lost and skipped.
        """
        out: list[BusEvent] = []
        for ev in events:
            if self.applied is not None and ev.seq <= self.applied:
                continue
            if self.applied is not None and ev.seq > self.applied + 1:
                self.stats.lost += ev.seq - self.applied - 1
                log.warning("events %d..%d are not in history: lost", self.applied + 1, ev.seq - 1)
            self._parked.pop(ev.seq, None)
            self._advance(ev)
            self.stats.refilled += 1
            out.append(ev)
        out.extend(self._release())
        return out

    def _release(self) -> list[BusEvent]:
        out: list[BusEvent] = []
        while self.applied is not None and (ev := self._parked.pop(self.applied + 1, None)):
            self._advance(ev)
            out.append(ev)
        # parked events at or below applied are stale now
        for seq in [s for s in self._parked if self.applied is not None and s <= self.applied]:
            del self._parked[seq]
        return out

    def skip_to_parked(self) -> list[BusEvent]:
        """History cannot fill the hole before the parked events: count it lost, go on."""
        if not self._parked or self.applied is None:
            return []
        first = min(self._parked)
        self.stats.lost += first - self.applied - 1
        log.warning("events %d..%d are not in history: lost", self.applied + 1, first - 1)
        self.applied = first - 1
        return self._release()

    @property
    def parked(self) -> int:
        return len(self._parked)

    def reset(self, applied: int) -> None:
        """Start again from ``applied`` (after a snapshot)."""
        self.applied = applied
        self.stats.applied_seq = applied
        self.stats.newest_seq = max(self.stats.newest_seq, applied)
        self._parked = {s: e for s, e in self._parked.items() if s > applied}


@dataclass(frozen=True)
class Endpoint:
    """Where the broker's bus and history are, and the credential to show them (if any)."""

    host: str = "127.0.0.1"
    events_port: int = EVENTS_PORT
    history_port: int = HISTORY_PORT
    credential: Credential | None = None

    @property
    def events_url(self) -> str:
        return f"tcp://{self.host}:{self.events_port}"

    @property
    def history_url(self) -> str:
        return f"tcp://{self.host}:{self.history_port}"


class HistoryClient:
    """Requests to the history ROUTER over a DEALER, with timeout and socket renewal."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        url: str,
        timeout_s: float = REQUEST_TIMEOUT_S,
        stats: SubscriberStats | None = None,
        credential: Credential | None = None,
    ) -> None:
        self._ctx = ctx
        self._url = url
        self._credential = credential
        self.timeout_s = timeout_s
        self.stats = stats or SubscriberStats()
        self._sock: zmq.asyncio.Socket | None = None

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            curve_client(sock, self._credential)
            sock.connect(self._url)
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def request_once(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request; raises :class:`TransportError` on timeout (socket renewed)."""
        sock = self._socket()
        self.stats.history_requests += 1
        await sock.send(pack(request))
        if not await sock.poll(int(self.timeout_s * 1000)):
            self.stats.history_timeouts += 1
            self.close()  # a late reply must not be taken for the next request's
            raise TransportError(f"no reply from history at {self._url} in {self.timeout_s} s")
        frames = await sock.recv_multipart()
        try:
            reply = unpack(frames[-1])
        except (EVError, ValueError, TypeError) as exc:
            raise TransportError(f"undecodable history reply: {exc}") from exc
        if not isinstance(reply, dict):
            raise TransportError("history reply is not a map")
        if reply.get("error") == "pruned" and isinstance(reply.get("first_seq"), int):
            raise EventsPruned(reply["first_seq"])
        if "error" in reply:
            raise HistoryRefused(request.get("op"), str(reply["error"]))
        return reply

    async def request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Retry until answered (the broker may be restarting); cancel to stop."""
        while True:
            try:
                return await self.request_once(request)
            except TransportError as exc:
                log.info("%s; retrying", exc)
                await asyncio.sleep(0.05)


def decode_events(raw: Any, stats: SubscriberStats) -> list[BusEvent]:
    out: list[BusEvent] = []
    for item in raw if isinstance(raw, list) else []:
        try:
            out.append(
                BusEvent(
                    int(item["seq"]), float(item["ts"]), str(item["topic"]), dict(item["data"])
                )
            )
        except (KeyError, TypeError, ValueError):
            stats.malformed += 1
    return out


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Subscriber:
    """Subscribe, catch up, follow; feeds a :class:`Sink` with sequenced events.

    ``start_seq``: catch up from history above this seq (0 = whole history).
    ``snapshot``: start from a history snapshot (Clone pattern).
    Neither: start with the first live event.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        sink: Sink,
        *,
        topics: Sequence[str] = (),
        start_seq: int | None = None,
        snapshot: bool = False,
        idle_poll_s: float = IDLE_POLL_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        page_limit: int = MAX_HISTORY_LIMIT,
        rcvhwm: int = 100_000,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.sink = sink
        self.wants = topic_matcher(topics)
        self.start_seq = start_seq
        self.use_snapshot = snapshot
        self.idle_poll_s = idle_poll_s
        self.page_limit = max(1, min(page_limit, MAX_HISTORY_LIMIT))
        self.rcvhwm = rcvhwm
        self.stats = SubscriberStats()
        self.seq = Sequencer(start_seq, self.stats)
        self._own_ctx = ctx is None
        self._ctx = ctx or zmq.asyncio.Context()
        self.history = HistoryClient(
            self._ctx, endpoint.history_url, request_timeout_s, self.stats, endpoint.credential
        )
        self._sub: zmq.asyncio.Socket | None = None
        self.ready = asyncio.Event()  # set once the initial catch-up is done
        self._reported_behind = False

    # --- delivery -------------------------------------------------------------------

    async def _deliver(self, events: Sequence[BusEvent]) -> None:
        if not events:
            return
        wanted = [e for e in events if self.wants(e.topic)]
        self.stats.delivered += len(wanted)
        assert self.seq.applied is not None
        done = self.sink.on_batch(wanted, self.seq.applied)
        if inspect.isawaitable(done):  # an async sink: back-pressure until it is done
            await done

    # --- history --------------------------------------------------------------------

    async def take_snapshot(self) -> None:
        snap = await self.history.request({"op": "snapshot"})
        seq = int(snap.get("seq", 0))
        self.stats.snapshots += 1
        self.sink.on_snapshot(snap)
        self.seq.reset(seq)
        await self._deliver(self.seq.accept_history([]))

    async def catch_up(self) -> None:
        """Page through history above the applied seq until it has nothing more."""
        if self.seq.applied is None:
            return
        while True:
            try:
                reply = await self.history.request(
                    {"op": "since", "seq": self.seq.applied, "limit": self.page_limit}
                )
            except EventsPruned as exc:
                await self._pruned(exc.first_seq)
                continue
            events = decode_events(reply.get("events"), self.stats)
            last_seq = _int_or_none(reply.get("last_seq"))
            if last_seq is not None:
                self.stats.newest_seq = max(self.stats.newest_seq, last_seq)
                if await self._behind(last_seq):
                    continue
            applied = self.seq.applied
            if self.use_snapshot and events and applied is not None and events[0].seq > applied + 1:
                # history lost the range: a fresh snapshot is exact
                log.warning("history no longer holds seq %d: new snapshot", applied + 1)
                await self.take_snapshot()
                continue
            await self._deliver(self.seq.accept_history(events))
            if not reply.get("more") or not events:
                if not events and self.seq.parked:
                    await self._deliver(self.seq.skip_to_parked())
                return

    async def _pruned(self, first_seq: int) -> None:
        """History no longer holds the events after the applied seq (``--retain-events``).

        Fall back to a snapshot: snapshot consumers (the monitor) take it and go on from
        its seq. A consumer without snapshots (billing, tail) is handed the snapshot too,
        then goes on from the oldest event still held; the pruned range counts as lost.
        """
        applied = self.seq.applied or 0
        missing = max(0, first_seq - 1 - applied)
        self.stats.pruned += 1
        log.warning(
            "history pruned seq %d..%d (%d events); falling back to a snapshot",
            applied + 1,
            first_seq - 1,
            missing,
        )
        if self.use_snapshot:
            await self.take_snapshot()
            return
        snap = await self.history.request({"op": "snapshot"})
        self.stats.snapshots += 1
        self.sink.on_snapshot(snap)
        self.stats.lost += missing
        self.seq.reset(first_seq - 1)

    async def _behind(self, last_seq: int) -> bool:
        """The broker's log ends below what we applied: its database was replaced or
        reset. Snapshot mode starts again from a new snapshot (returns True); otherwise
        the condition is reported once per occurrence and events at or below the applied
        seq keep being dropped as already seen."""
        applied = self.seq.applied
        if applied is None or last_seq >= applied:
            self._reported_behind = False
            return False
        if self.use_snapshot:
            log.warning("broker log ends at seq %d, below %d: new snapshot", last_seq, applied)
            self.stats.resets += 1
            self.stats.newest_seq = last_seq
            await self.take_snapshot()
            return True
        if not self._reported_behind:
            self.stats.resets += 1
            log.error(
                "broker log ends at seq %d, below seq %d where this consumer stands "
                "(a replaced or reset broker database, or a start seq from the future)",
                last_seq,
                applied,
            )
            self._reported_behind = True
        return False

    # --- live -----------------------------------------------------------------------

    def _decode_live(self, frames: list[bytes]) -> BusEvent | None:
        try:
            return decode_event(frames)
        except (EVError, ValueError, TypeError, KeyError) as exc:
            self.stats.malformed += 1
            log.warning("malformed bus message dropped: %s", exc)
            return None

    async def _handle_live(self, first: list[bytes]) -> None:
        assert self._sub is not None
        batch: list[BusEvent] = []
        gap = check = False
        frames: list[bytes] | None = first
        n = 0
        while frames is not None:
            ev = self._decode_live(frames)
            if ev is not None:
                self.stats.live += 1
                ready, found = self.seq.offer(ev)
                batch.extend(ready)
                gap = gap or found
                # a restarted broker: check its log (it may have been reset)
                check = check or ev.topic == "broker.started"
            n += 1
            frames = None
            if n < LIVE_BATCH:
                frames = recv_nowait(self._sub)
        await self._deliver(batch)
        if gap:
            self.stats.gaps += 1
        if gap or check:
            await self.catch_up()

    async def run(self) -> None:
        """Run until cancelled. Sockets are closed on the way out."""
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        curve_client(sub, self.endpoint.credential)
        sub.connect(self.endpoint.events_url)
        self._sub = sub
        try:
            if self.use_snapshot:
                await self.take_snapshot()
            await self.catch_up()
            self.ready.set()
            while True:
                if await sub.poll(int(self.idle_poll_s * 1000)):
                    await self._handle_live(await sub.recv_multipart())
                else:
                    await self.catch_up()
        finally:
            self.close()

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None
        self.history.close()
        if self._own_ctx:
            self._ctx.term()
