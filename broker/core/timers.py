"""A timer heap with lazy invalidation.

Entries are ``(due, order, kind, key, token)``. Nothing is ever removed from
the middle of the heap: the owner checks, when an entry pops, whether it still
means something (its ``token`` still matches the object's current state) and
simply drops it otherwise. Scheduling is O(log n), popping is amortised
O(log n), and nothing scans every object on a tick.
"""

from __future__ import annotations

import heapq
from typing import Literal

TimerKind = Literal["offline", "expire", "grace", "ack", "hold"]
TimerEntry = tuple[float, int, TimerKind, str, float]


class TimerHeap:
    """Earliest-first timers keyed by ``(kind, key)``; validity is decided by the caller."""

    __slots__ = ("_heap", "_order")

    def __init__(self) -> None:
        self._heap: list[TimerEntry] = []
        self._order = 0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, due: float, kind: TimerKind, key: str, token: float = 0.0) -> None:
        """Add a timer; ``token`` lets the owner recognise a stale entry later."""
        self._order += 1
        heapq.heappush(self._heap, (due, self._order, kind, key, token))

    def peek(self) -> TimerEntry | None:
        """The earliest entry (possibly stale) or None."""
        return self._heap[0] if self._heap else None

    def pop_due(self, now: float) -> TimerEntry | None:
        """Remove and return the earliest entry if it is due at ``now``."""
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)
        return None

    def discard_top(self) -> None:
        """Drop the earliest entry (the owner found it stale)."""
        heapq.heappop(self._heap)
