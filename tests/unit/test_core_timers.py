"""The timer heap: earliest first, due-only popping, stable order for equal times."""

from __future__ import annotations

from broker.core.timers import TimerHeap


def test_pops_only_due_entries_earliest_first() -> None:
    t = TimerHeap()
    t.schedule(5.0, "expire", "b", 5.0)
    t.schedule(1.0, "offline", "a")
    t.schedule(5.0, "grace", "c", 2.0)
    assert len(t) == 3 and t.peek() is not None and t.peek()[0] == 1.0  # type: ignore[index]
    assert t.pop_due(0.5) is None
    first = t.pop_due(1.0)
    assert first is not None and first[2:4] == ("offline", "a")
    assert t.pop_due(4.9) is None
    got = [t.pop_due(5.0), t.pop_due(5.0)]
    assert [g[3] for g in got if g is not None] == ["b", "c"]  # scheduling order on ties
    assert t.pop_due(100.0) is None and t.peek() is None


def test_discard_top_drops_the_earliest() -> None:
    t = TimerHeap()
    t.schedule(2.0, "ack", "x")
    t.schedule(3.0, "ack", "y")
    t.discard_top()
    top = t.peek()
    assert top is not None and top[3] == "y"
