"""The shared bus subscriber against a real in-test bus (zmq PUB + history ROUTER).

:class:`FakeBus` publishes a list of events on a real PUB socket and serves
them from a real ROUTER (since / snapshot / accounts) in a thread, so the
subscriber is exercised over real sockets: catch-up, gaps, duplicates, slow
consumers, restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.consumers.subscriber import Sequencer, Subscriber, SubscriberStats, topic_matcher
from common.codec import pack
from common.messages import BusEvent
from tests.support.fake_bus import Collect, FakeBus, status


@pytest.fixture
def bus() -> Iterator[FakeBus]:
    b = FakeBus()
    try:
        yield b
    finally:
        b.close()


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def run_with(sub: Subscriber, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``sub`` while ``body`` runs; always cancel it and close its sockets."""

    async def main() -> None:
        task = asyncio.create_task(sub.run())
        try:
            await body()
            if task.done():
                task.result()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())


def ev(seq: int, topic: str = "point.status") -> BusEvent:
    return BusEvent(seq, 1.0 + seq, topic, {})


def test_sequencer_orders_drops_duplicates_and_reports_gaps() -> None:
    s = Sequencer(0)
    assert s.offer(ev(1)) == ([ev(1)], False)
    assert s.offer(ev(1)) == ([], False)
    assert s.offer(ev(3)) == ([], True)
    assert s.parked == 1
    out = s.accept_history([ev(2), ev(3)])
    assert [e.seq for e in out] == [2, 3]
    assert s.applied == 3 and s.parked == 0
    assert s.stats.duplicates == 1 and s.stats.refilled == 2


def test_sequencer_counts_a_hole_that_history_no_longer_has() -> None:
    s = Sequencer(10)
    out = s.accept_history([ev(15), ev(16)])
    assert [e.seq for e in out] == [15, 16]
    assert s.stats.lost == 4


def test_sequencer_without_start_takes_the_first_live_event() -> None:
    s = Sequencer(None)
    assert s.offer(ev(42))[0] == [ev(42)]
    assert s.offer(ev(44)) == ([], True)
    assert [e.seq for e in s.skip_to_parked()] == [44]
    assert s.stats.lost == 1


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(1, 30))), st.lists(st.integers(1, 29), max_size=20))
def test_sequencer_delivers_each_event_once_in_order(order: list[int], dups: list[int]) -> None:
    """Whatever order and duplication live events come in, plus a history refill
    of everything, every seq is delivered exactly once, ascending."""
    s = Sequencer(0)
    out: list[int] = []
    for seq in order + dups:
        ready, _gap = s.offer(ev(seq))
        out.extend(e.seq for e in ready)
    out.extend(e.seq for e in s.accept_history([ev(i) for i in range(1, 30)]))
    assert out == list(range(1, 30))
    assert s.stats.lost == 0


def test_topic_matcher() -> None:
    m = topic_matcher(["charging.", "point.off"])
    assert m("charging.completed") and m("point.offline")
    assert not m("point.online")
    assert topic_matcher([])("anything")


def test_stats_lag() -> None:
    st_ = SubscriberStats(applied_seq=5, newest_seq=9)
    assert st_.lag == 4 and st_.as_dict()["lag"] == 4


# --- over real sockets ------------------------------------------------------------------


def test_catch_up_pages_through_history_then_follows_live(bus: FakeBus) -> None:
    for i in range(2500):
        bus.publish("point.status", status(i), send=False)
    sink = Collect()
    sub = Subscriber(bus.endpoint, sink, start_seq=0, idle_poll_s=0.2)

    async def body() -> None:
        await until(lambda: len(sink.events) == 2500)
        assert sub.ready.is_set()
        await until(lambda: bus.subscribers() >= 1)
        for i in range(50):
            bus.publish("point.status", status(i))
        await until(lambda: len(sink.events) == 2550)

    run_with(sub, body)
    assert sink.seqs == list(range(1, 2551))
    assert sub.stats.lost == 0 and sub.stats.lag == 0
    assert [r["limit"] for r in bus.requests if r["op"] == "since"][:3] == [1000, 1000, 1000]


def test_gap_in_live_stream_is_refilled_from_history(bus: FakeBus) -> None:
    sink = Collect()
    sub = Subscriber(bus.endpoint, sink, start_seq=0, idle_poll_s=5.0)

    async def body() -> None:
        await until(sub.ready.is_set)
        await until(lambda: bus.subscribers() >= 1)
        bus.publish("point.status", status(1))
        await until(lambda: len(sink.events) == 1)
        for i in range(5):
            bus.publish("point.status", status(i), send=False)  # lost on the wire
        bus.publish("charging.completed", {"session_id": "S1"})
        await until(lambda: len(sink.events) == 7, timeout=3.0)  # well before idle poll

    run_with(sub, body)
    assert sink.seqs == list(range(1, 8))
    assert sub.stats.gaps == 1 and sub.stats.refilled == 6  # 2..7 came from history


def test_silence_after_a_lost_event_is_found_by_the_idle_poll(bus: FakeBus) -> None:
    sink = Collect()
    sub = Subscriber(bus.endpoint, sink, start_seq=0, idle_poll_s=0.2)

    async def body() -> None:
        await until(sub.ready.is_set)
        bus.publish("charging.completed", {"session_id": "S9"}, send=False)
        await until(lambda: len(sink.events) == 1, timeout=3.0)

    run_with(sub, body)
    assert sink.events[0].data == {"session_id": "S9"}


def test_duplicates_are_dropped(bus: FakeBus) -> None:
    sink = Collect()
    sub = Subscriber(bus.endpoint, sink, start_seq=0, idle_poll_s=5.0)

    async def body() -> None:
        await until(sub.ready.is_set)
        await until(lambda: bus.subscribers() >= 1)
        first = bus.publish("point.status", status(1))
        bus.resend(first)
        second = bus.publish("point.status", status(2))
        bus.resend(first)
        bus.resend(second)
        bus.publish("point.status", status(3))
        await until(lambda: sub.stats.live >= 6)

    run_with(sub, body)
    assert sink.seqs == [1, 2, 3]
    assert sub.stats.duplicates == 3


def test_topic_filter_applies_after_sequencing(bus: FakeBus) -> None:
    sink = Collect()
    sub = Subscriber(bus.endpoint, sink, topics=["charging."], start_seq=0, idle_poll_s=5.0)

    async def body() -> None:
        await until(sub.ready.is_set)
        await until(lambda: bus.subscribers() >= 1)
        for i in range(20):
            bus.publish("charging.completed" if i % 5 == 4 else "point.status", status(i))
        await until(lambda: sub.stats.applied_seq == 20)

    run_with(sub, body)
    assert sink.seqs == [5, 10, 15, 20]
    assert sub.stats.gaps == 0
    assert sink.applied[-1] == 20


def test_slow_consumer_catches_up_through_history() -> None:
    """A consumer too slow for the socket buffers loses live messages and gets them back."""
    bus = FakeBus(sndhwm=20)
    try:
        sink = Collect(delay_s=0.2)
        sub = Subscriber(bus.endpoint, sink, start_seq=0, idle_poll_s=0.3, rcvhwm=20)

        async def body() -> None:
            await until(sub.ready.is_set)
            await until(lambda: bus.subscribers() >= 1)
            for i in range(3000):
                bus.publish("point.status", status(i))
            await until(lambda: len(sink.events) == 3000, timeout=20)

        run_with(sub, body)
        assert sink.seqs == list(range(1, 3001))
        assert sub.stats.live < 3000  # the buffers did drop messages
        assert sub.stats.refilled > 0
    finally:
        bus.close()


def test_snapshot_mode_applies_only_events_after_the_snapshot(bus: FakeBus) -> None:
    for i in range(5):
        bus.publish("point.status", status(i), send=False)
    bus.snapshot_state = {"points": [{"id": "CP1"}], "queues": {}, "sessions": []}
    sink = Collect()
    sub = Subscriber(bus.endpoint, sink, snapshot=True, idle_poll_s=0.2)

    async def body() -> None:
        await until(sub.ready.is_set)
        bus.publish("point.status", status(6), send=False)
        bus.publish("point.status", status(7))
        await until(lambda: len(sink.events) == 2)

    run_with(sub, body)
    assert sink.snapshots[0]["seq"] == 5 and sink.snapshots[0]["points"] == [{"id": "CP1"}]
    assert sink.seqs == [6, 7]


def test_reconnects_when_the_broker_restarts(bus: FakeBus) -> None:
    sink = Collect()
    sub = Subscriber(bus.endpoint, sink, start_seq=0, idle_poll_s=0.3, request_timeout_s=0.3)

    async def body() -> None:
        await until(sub.ready.is_set)
        await until(lambda: bus.subscribers() >= 1)
        bus.publish("point.status", status(1))
        await until(lambda: len(sink.events) == 1)
        bus.stop()
        await until(lambda: sub.stats.history_timeouts >= 1)  # nobody answers meanwhile
        bus.publish("point.status", status(2), send=False)  # "published" while down
        bus.start()  # same ports, seq continues
        await until(lambda: bus.subscribers() >= 1)  # the SUB reconnected
        bus.publish("broker.started", {})
        await until(lambda: len(sink.events) == 3, timeout=5)

    run_with(sub, body)
    assert sink.seqs == [1, 2, 3]
    assert sub.stats.history_timeouts >= 1


def test_waits_for_a_broker_that_is_not_up_yet() -> None:
    bus = FakeBus()
    bus.answer_history = False
    try:
        bus.publish("charging.completed", {"session_id": "S1"}, send=False)
        sink = Collect()
        sub = Subscriber(bus.endpoint, sink, start_seq=0, request_timeout_s=0.2)

        async def body() -> None:
            await until(lambda: sub.stats.history_timeouts >= 1)
            assert not sub.ready.is_set() and sink.events == []
            bus.answer_history = True
            await until(lambda: len(sink.events) == 1)

        run_with(sub, body)
        assert sub.stats.history_timeouts >= 1
    finally:
        bus.close()


def test_malformed_live_messages_are_counted_and_dropped(bus: FakeBus) -> None:
    sink = Collect()
    sub = Subscriber(bus.endpoint, sink, start_seq=0, idle_poll_s=5.0)

    async def body() -> None:
        await until(sub.ready.is_set)
        await until(lambda: bus.subscribers() >= 1)
        assert bus._pub is not None
        bus._pub.send_multipart([b"point.status", b"\xc1 not msgpack"])
        bus._pub.send_multipart([b"point.status", pack({"seq": "x"})])
        bus.publish("point.status", status(1))
        await until(lambda: len(sink.events) == 1)

    run_with(sub, body)
    assert sub.stats.malformed == 2


def test_a_reset_broker_log_is_reported_and_snapshot_mode_starts_again(bus: FakeBus) -> None:
    for i in range(30):
        bus.publish("point.status", status(i), send=False)
    plain, cloned = Collect(), Collect()
    sub = Subscriber(bus.endpoint, plain, start_seq=0, idle_poll_s=0.2)
    mon = Subscriber(bus.endpoint, cloned, snapshot=True, idle_poll_s=0.2)

    async def body() -> None:
        task = asyncio.create_task(mon.run())
        try:
            await until(lambda: sub.ready.is_set() and mon.ready.is_set())
            await until(lambda: bus.subscribers() >= 2)
            bus.log.clear()  # a broker started on a fresh database: seq from 1 again
            bus.snapshot_state = {"points": [{"id": "CP-new"}], "queues": {}, "sessions": []}
            bus.publish("broker.started", {})
            bus.publish("point.status", status(1))
            await until(lambda: len(cloned.snapshots) == 2 and sub.stats.resets == 1)
            bus.publish("point.status", status(2))
            await until(lambda: cloned.seqs[-1:] == [3])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run_with(sub, body)
    assert cloned.snapshots[1]["points"] == [{"id": "CP-new"}]
    assert plain.seqs == list(range(1, 31))  # nothing below the applied seq is taken again
    assert sub.stats.resets == 1 and mon.stats.resets >= 1
