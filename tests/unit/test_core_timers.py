"""The timer heap: earliest first, due-only popping, stable order for equal times."""

from __future__ import annotations

from broker.core.timers import AckTimeout, GraceEnd, OfflineCheck, TimerHeap, TurnDeadline


def test_pops_only_due_entries_earliest_first() -> None:
    t = TimerHeap()
    t.schedule(5.0, TurnDeadline("b", 5.0))
    t.schedule(1.0, OfflineCheck("a"))
    t.schedule(5.0, GraceEnd("c", 2.0))
    top = t.peek()
    assert len(t) == 3 and top is not None and top[0] == 1.0
    assert t.pop_due(0.5) is None
    first = t.pop_due(1.0)
    assert first is not None and first[2] == OfflineCheck("a")
    assert t.pop_due(4.9) is None
    got = [t.pop_due(5.0), t.pop_due(5.0)]
    # scheduling order on ties
    assert [g[2] for g in got if g is not None] == [TurnDeadline("b", 5.0), GraceEnd("c", 2.0)]
    assert t.pop_due(100.0) is None and t.peek() is None


def test_discard_top_drops_the_earliest() -> None:
    t = TimerHeap()
    t.schedule(2.0, AckTimeout("x"))
    t.schedule(3.0, AckTimeout("y"))
    t.discard_top()
    top = t.peek()
    assert top is not None and top[2] == AckTimeout("y")
