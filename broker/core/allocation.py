"""Sharing one site's power among its sessions (energy.md, "The allocation rule").

Theory of operation
-------------------
Everything is in integer watts, so that sums are exact and the same inputs give
the same numbers on every machine. A :class:`SiteAllocator` holds the sessions
running on one site and, for each, three numbers:

* ``target_w``: what the rule gives it now (:func:`allocate`);
* ``sent_w``: the last limit the broker told the station (the station's limit
  once every command sent has been applied);
* ``granted_w``: the limit the broker must assume *in force*: the largest value
  the station may be applying, i.e. the last acknowledged value or any value sent
  after it and not yet acknowledged.

:meth:`SiteAllocator.reconcile` compares them and returns the ``limit``
commands to send: every lowering at once; raises only when no lowering on the
site is still unacknowledged (reduce before increase). A raise counts as in
force the moment it is sent, a lowering only once acknowledged, so the sum of
``granted_w`` never exceeds the site's limit, whatever acks are lost. (After
the operator lowers the limit itself, the old, higher limit stays the bound until
the lowerings it causes are acknowledged; nothing can make stations draw less
before they know.) An unacknowledged lowering is sent again every
:data:`RESEND_S`; an ack of a later command settles the earlier ones (commands
to one station arrive in order).

The rule itself (:func:`allocate`) walks the sessions in priority order (running
ones by start time then id, then the paused ones first-paused-first, then new
ones): the longest prefix whose minimums fit in the limit runs, the rest are
paused; the running ones share the limit max-min fairly ("water filling"), each
with a demand of at least its minimum. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

DEFAULT_MIN_W: Final = 4200  # 6 A on three phases
#: Equal shares are whole multiples of this (0.1 kW): a charger cannot regulate finer,
#: and a session's small change then moves nobody else's limit (no command storm).
STEP_W: Final = 100
RESEND_S: Final = 2.0  # an unacknowledged lowering is sent again after this long


def kw_to_w(kw: float) -> int:
    """kW (as operators and stations write it) to whole watts, rounded down."""
    return int(kw * 1000.0 + 1e-6)


def w_to_kw(w: int) -> float:
    return w / 1000.0


def water_fill(limit_w: int, demands: Sequence[int], step_w: int = STEP_W) -> list[int]:
    """Max-min fair shares of ``limit_w`` for ``demands``, in the same order.

    Sessions whose demand is below an equal share get their demand; the rest
    split what remains equally, in whole ``step_w`` (what an equal split in such
    steps cannot divide, less than ``step_w`` per session, stays unallocated).
    """
    n = len(demands)
    if n == 0:
        return []
    if sum(demands) <= limit_w:
        return list(demands)
    order = sorted(range(n), key=demands.__getitem__)
    out = [0] * n
    remaining, left = limit_w, n
    for pos, i in enumerate(order):
        share = remaining // left // step_w * step_w
        d = demands[i]
        if d > share:
            for j in order[pos:]:
                out[j] = share
            break
        out[i] = d
        remaining -= d
        left -= 1
    return out


def allocate(
    limit_w: int, mins: Sequence[int], demands: Sequence[int], step_w: int = STEP_W
) -> list[int]:
    """The allowed power of each session given in priority order (0: paused).

    ``mins[i]`` is session i's minimum (``min_kw``, or its point's power when
    lower), ``demands[i]`` what it would take. The longest prefix whose minimums
    fit runs; each of those gets at least its minimum.
    """
    mins = [round_up(m, step_w) for m in mins]
    wants = [max(d, m) for d, m in zip(demands, mins, strict=True)]
    return _share(limit_w, mins, wants, step_w)


def round_up(w: int, step_w: int = STEP_W) -> int:
    """``w`` up to whole steps."""
    return -(-w // step_w) * step_w


def _share(limit_w: int, mins: Sequence[int], wants: Sequence[int], step_w: int) -> list[int]:
    """:func:`allocate` with minimums in whole steps and wants ``max(demand, min)``."""
    running, used = 0, 0
    for m in mins:
        if used + m > limit_w:
            break
        used += m
        running += 1
    if running == len(wants):
        return water_fill(limit_w, wants, step_w)
    return water_fill(limit_w, wants[:running], step_w) + [0] * (len(mins) - running)


def _start_order(s: Slot) -> tuple[float, str]:
    return (s.started_at, s.session_id)


class SlotState(StrEnum):
    NEW = "new"  # admitted, not yet given a place by the rule
    RUNNING = "running"
    PAUSED = "paused"
    BLOCKED = "blocked"  # drew more than its limit again and again: held at 0


@dataclass(slots=True)
class Slot:
    """One session on a site, as the allocator sees it."""

    session_id: str
    point_id: str
    started_at: float
    nominal_w: int
    min_w: int
    demand_w: int
    granted_w: int
    sent_w: int
    state: SlotState = SlotState.NEW
    target_w: int = 0
    min_q: int = 0  # min_w in whole steps (what the rule uses)
    want_w: int = 0  # max(demand_w, min_q)
    sent_at: float = 0.0
    pending: list[tuple[str, int]] = field(default_factory=list)  # (cmd_id, watts), sent order


@dataclass(slots=True)
class LimitOrder:
    """Send ``limit {session_id, kw}`` with ``cmd_id`` to the station of ``point_id``."""

    cmd_id: str
    point_id: str
    session_id: str
    watts: int


@dataclass(slots=True)
class Plan:
    """What one :meth:`SiteAllocator.reconcile` decided."""

    orders: list[LimitOrder]
    paused: list[str]
    resumed: list[str]
    changed: bool  # some target changed: publish ``site.allocation``
    powers: list[tuple[str, int]]  # (session_id, watts) of every changed target


class SiteAllocator:
    """The sessions of one site and the limits the broker has told their stations."""

    def __init__(self, limit_w: int, min_w: int = DEFAULT_MIN_W) -> None:
        self.limit_w = limit_w
        self.min_w = min_w
        self._slots: dict[str, Slot] = {}
        self._paused: list[str] = []  # first-paused-first
        self._dirty = True
        self._powers: list[tuple[str, int]] = []
        self._order: list[Slot] | None = None  # priority order, until a slot comes, goes or moves
        self._new = 0  # slots in state NEW
        self._joined_or_left = False  # the site's sessions changed: its allocation did
        #: slots whose limit in force or last sent differs from their target: the only
        #: ones reconcile looks at (insertion-ordered, for determinism)
        self._unsettled: dict[str, None] = {}
        self._blocked = 0  # slots in state BLOCKED

    # --- reading --------------------------------------------------------------------

    def slot(self, session_id: str) -> Slot | None:
        return self._slots.get(session_id)

    def slots(self) -> list[Slot]:
        """Every slot in priority order."""
        return list(self._priority())

    def __len__(self) -> int:
        return len(self._slots)

    def granted_total(self) -> int:
        return sum(s.granted_w for s in self._slots.values())

    def allocated_total(self) -> int:
        return sum(s.target_w for s in self._slots.values())

    def lowering_pending(self) -> bool:
        slots = self._slots
        return any(slots[sid].granted_w > slots[sid].target_w for sid in self._unsettled)

    def _mark(self, s: Slot) -> None:
        if s.granted_w != s.target_w or s.sent_w != s.target_w:
            self._unsettled[s.session_id] = None
        else:
            self._unsettled.pop(s.session_id, None)

    def _wants(self, s: Slot) -> None:
        s.min_q = round_up(s.min_w)
        s.want_w = max(s.demand_w, s.min_q)

    # --- inputs ---------------------------------------------------------------------

    def touch(self) -> None:
        """Re-run the rule at the next :meth:`reconcile` even if no input changed."""
        self._dirty = True

    def set_limit(self, limit_w: int, min_w: int) -> None:
        self.limit_w, self.min_w = limit_w, min_w
        for s in self._slots.values():
            s.min_w = min(min_w, s.nominal_w)
            self._wants(s)
        self._dirty = True

    def admit(
        self,
        session_id: str,
        point_id: str,
        started_at: float,
        nominal_w: int,
        granted_w: int = 0,
    ) -> None:
        """A session joins the site; ``granted_w``: what its station may draw already
        (0 for a start not yet sent; the point's power for a session already running)."""
        slot = self._slots[session_id] = Slot(
            session_id=session_id,
            point_id=point_id,
            started_at=started_at,
            nominal_w=nominal_w,
            min_w=min(self.min_w, nominal_w),
            demand_w=nominal_w,
            granted_w=granted_w,
            sent_w=granted_w,
        )
        self._wants(slot)
        self._mark(slot)
        self._dirty = True
        self._joined_or_left = True
        self._new += 1
        order = self._order
        if order is not None and (not order or _start_order(order[-1]) < _start_order(slot)):
            if order and order[-1].state is SlotState.BLOCKED:
                self._order = None
            else:
                order.append(slot)  # the latest start goes last: the order holds
        else:
            self._order = None

    def start(
        self,
        session_id: str,
        point_id: str,
        started_at: float,
        nominal_w: int,
        now: float,
        new_id: Callable[[str], str],
    ) -> tuple[int, Plan]:
        """A new session is about to be started: the limit its ``start`` carries (its
        allocation when it can be raised at once, else 0: it rises once the lowerings
        are acknowledged) and the plan for the others. The start counts as sent."""
        self.admit(session_id, point_id, started_at, nominal_w, 0)
        plan = self.reconcile(now, new_id)
        s = self._slots[session_id]
        for i, order in enumerate(plan.orders):
            if order.session_id == session_id:
                del plan.orders[i]
                s.pending.clear()  # carried by the start command
                break
        return s.sent_w, plan

    def remove(self, session_id: str) -> bool:
        """The session ended (its station draws nothing more)."""
        s = self._slots.pop(session_id, None)
        if s is None:
            return False
        self._unsettled.pop(session_id, None)
        self._joined_or_left = True
        if s.state is SlotState.PAUSED:
            self._paused.remove(session_id)
        elif s.state is SlotState.NEW:
            self._new -= 1
        elif s.state is SlotState.BLOCKED:
            self._blocked -= 1
        self._dirty = True
        if self._order is not None:
            self._order.remove(s)
        return True

    def report_demand(self, session_id: str, demand_w: int) -> bool:
        """The vehicle takes ``demand_w`` (capped at the point's power); True if it changed."""
        s = self._slots.get(session_id)
        if s is None:
            return False
        demand_w = max(0, min(demand_w, s.nominal_w))
        if demand_w == s.demand_w:
            return False
        s.demand_w = demand_w
        self._wants(s)
        self._dirty = True
        return True

    def block(self, session_id: str) -> bool:
        """Hold the session at 0 from now on (it ignored its limit)."""
        s = self._slots.get(session_id)
        if s is None or s.state is SlotState.BLOCKED:
            return False
        if s.state is SlotState.PAUSED:
            self._paused.remove(session_id)
        elif s.state is SlotState.NEW:
            self._new -= 1
        self._blocked += 1
        s.state = SlotState.BLOCKED
        self._dirty = True
        self._order = None
        return True

    def acked(self, session_id: str, cmd_id: str) -> bool:
        """The station acknowledged ``cmd_id``; False if it was not outstanding."""
        s = self._slots.get(session_id)
        if s is None:
            return False
        for i, (cid, w) in enumerate(s.pending):
            if cid == cmd_id:
                del s.pending[: i + 1]
                s.granted_w = max([w] + [pw for _c, pw in s.pending])
                self._mark(s)
                return True
        return False

    # --- the rule -------------------------------------------------------------------

    def _priority(self) -> list[Slot]:
        if self._order is not None:
            return self._order
        running: list[Slot] = []
        new: list[Slot] = []
        blocked: list[Slot] = []
        for s in self._slots.values():
            if s.state is SlotState.RUNNING:
                running.append(s)
            elif s.state is SlotState.NEW:
                new.append(s)
            elif s.state is SlotState.BLOCKED:
                blocked.append(s)
        running.sort(key=_start_order)
        new.sort(key=_start_order)
        blocked.sort(key=_start_order)
        paused = [self._slots[sid] for sid in self._paused]
        self._order = running + paused + new + blocked
        return self._order

    def _retarget(self) -> tuple[list[str], list[str], bool]:
        order = self._priority()
        live = (
            order if not self._blocked else [s for s in order if s.state is not SlotState.BLOCKED]
        )
        had_new = self._new > 0
        self._new = 0
        shares = _share(self.limit_w, [s.min_q for s in live], [s.want_w for s in live], STEP_W)
        paused: list[str] = []
        resumed: list[str] = []
        powers = self._powers = []
        for s, w in zip(live, shares, strict=True):
            if w != s.target_w:
                powers.append((s.session_id, w))
                s.target_w = w
                self._mark(s)
            if w > 0 and s.state is not SlotState.RUNNING:
                if s.state is SlotState.PAUSED:
                    self._paused.remove(s.session_id)
                    resumed.append(s.session_id)
                s.state = SlotState.RUNNING
            elif w == 0 and s.state is not SlotState.PAUSED:
                s.state = SlotState.PAUSED
                self._paused.append(s.session_id)
                paused.append(s.session_id)
        for s in order[len(live) :]:
            if s.target_w != 0:
                powers.append((s.session_id, 0))
                s.target_w = 0
                self._mark(s)
        if paused or resumed or (had_new and self._paused):
            self._order = None  # (a new session that runs stays last: the order holds)
        return paused, resumed, bool(powers)

    def _send(self, s: Slot, w: int, now: float, new_id: Callable[[str], str]) -> LimitOrder:
        order = LimitOrder(new_id("cmd"), s.point_id, s.session_id, w)
        s.pending.append((order.cmd_id, w))
        s.sent_w = w
        s.sent_at = now
        if w > s.granted_w:
            s.granted_w = w
        self._mark(s)
        return order

    def reconcile(self, now: float, new_id: Callable[[str], str]) -> Plan:
        """Re-run the rule if an input changed and return the commands it needs."""
        paused: list[str] = []
        resumed: list[str] = []
        changed = False
        self._powers = []
        if self._dirty:
            self._dirty = False
            paused, resumed, changed = self._retarget()
        changed = changed or self._joined_or_left
        self._joined_or_left = False
        orders: list[LimitOrder] = []
        lowering = False
        slots = self._slots
        for sid in list(self._unsettled):
            s = slots[sid]
            if s.granted_w > s.target_w:
                lowering = True
                if s.sent_w != s.target_w or now - s.sent_at >= RESEND_S:
                    orders.append(self._send(s, s.target_w, now, new_id))
        if not lowering and self._unsettled:
            # every one left wants a raise, and only running sessions have a target
            # above 0: their priority order is their start order
            raises = sorted((slots[sid] for sid in self._unsettled), key=_start_order)
            for s in raises:
                if s.sent_w != s.target_w:
                    orders.append(self._send(s, s.target_w, now, new_id))
        return Plan(orders, paused, resumed, changed, self._powers)


def fair(limit_w: int, entries: Iterable[tuple[int, int, int]], step_w: int = STEP_W) -> bool:
    """Whether ``(allocated, demand, minimum)`` triples of running sessions are
    max-min fair under ``limit_w``: every session short of its demand (at least its
    minimum) has the same, largest share, and no more than a few watts are left
    unallocated while one is short (for tests and checks)."""
    rows = [(a, max(d, -(-m // step_w) * step_w)) for a, d, m in entries]
    short = [a for a, want in rows if a < want]
    if any(a > want for a, want in rows):
        return False
    if not short:
        return True
    level = short[0]
    if any(a != level for a in short) or any(want > level for a, want in rows if a == want):
        return False
    return 0 <= limit_w - sum(a for a, _w in rows) < step_w * len(short)
