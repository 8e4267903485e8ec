"""Typed timers and a heap with lazy invalidation.

A timer says what is due and carries what its owner needs to recognise a stale
entry: :class:`OfflineCheck` (a point's liveness window), :class:`TurnDeadline`
(the deadline a reservation had when it was armed), :class:`GraceEnd` (the
instant a point became unusable), :class:`AckTimeout` (a start command) and
:class:`HoldTimeout` (a hold whose ack decides a reservation).
:data:`Timer` is their union; the engine dispatches on it with an exhaustive
``match`` (``assert_never``), so a new kind cannot be forgotten silently.

Heap entries are ``(due, order, timer)``. Nothing is ever removed from the
middle of the heap: the owner checks, when an entry pops, whether it still
means something and simply drops it otherwise. Scheduling is O(log n), popping
is amortised O(log n), and nothing scans every object on a tick.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OfflineCheck:
    """Is ``point_id`` still heard within its window?"""

    point_id: str


@dataclass(frozen=True, slots=True)
class TurnDeadline:
    """The turn of ``reservation_id`` ends, if its deadline is still ``deadline``."""

    reservation_id: str
    deadline: float


@dataclass(frozen=True, slots=True)
class GraceEnd:
    """The grace period of ``point_id`` ends, if it has been unusable since ``since``."""

    point_id: str
    since: float


@dataclass(frozen=True, slots=True)
class AckTimeout:
    """The station did not ack start command ``cmd_id`` in time (if still pending)."""

    cmd_id: str


@dataclass(frozen=True, slots=True)
class HoldTimeout:
    """The station did not ack hold command ``cmd_id`` in time (if still awaited)."""

    cmd_id: str


@dataclass(frozen=True, slots=True)
class ParkingEnd:
    """Parking of ``session_id`` reaches its cap, if it has been parked since ``since``."""

    session_id: str
    since: float


Timer = OfflineCheck | TurnDeadline | GraceEnd | AckTimeout | HoldTimeout | ParkingEnd
TimerEntry = tuple[float, int, Timer]


class TimerHeap:
    """Earliest-first timers; validity is decided by the caller when an entry pops."""

    __slots__ = ("_heap", "_order")

    def __init__(self) -> None:
        self._heap: list[TimerEntry] = []
        self._order = 0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, due: float, timer: Timer) -> None:
        """Add ``timer`` due at ``due`` (ties keep scheduling order)."""
        self._order += 1
        heapq.heappush(self._heap, (due, self._order, timer))

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
