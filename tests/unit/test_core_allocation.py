"""The allocation rule of a site (broker/core/allocation.py): examples and a
Hypothesis state machine over starts, ends, limit changes, demand reports and
lost acks."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.core.allocation import (
    RESEND_S,
    LimitOrder,
    Plan,
    SiteAllocator,
    SlotState,
    allocate,
    fair,
    kw_to_w,
    water_fill,
)


def ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}-{next(counter)}"


def ack_all(site: SiteAllocator, orders: list[LimitOrder]) -> None:
    for o in orders:
        site.acked(o.session_id, o.cmd_id)


def targets(site: SiteAllocator) -> dict[str, int]:
    return {s.session_id: s.target_w for s in site.slots()}


def test_water_fill_gives_small_demands_their_demand_and_splits_the_rest() -> None:
    assert water_fill(50_000, [22_000] * 4) == [12_500] * 4
    assert water_fill(40_000, [5_000, 22_000, 22_000]) == [5_000, 17_500, 17_500]
    assert water_fill(100_000, [22_000, 11_000]) == [22_000, 11_000]
    assert water_fill(10_000, [3_000, 3_000, 3_000]) == [3_000] * 3
    assert water_fill(10, [7, 7, 7], step_w=1) == [3, 3, 3]
    assert water_fill(50_000, [22_000] * 3) == [16_600] * 3  # steps of 0.1 kW
    assert water_fill(5, []) == []


def test_allocate_pauses_the_sessions_that_do_not_fit_their_minimum() -> None:
    assert allocate(10_000, [4200] * 4, [22_000] * 4) == [5_000, 5_000, 0, 0]
    assert allocate(4_000, [4200] * 2, [22_000] * 2) == [0, 0]
    # a point slower than min_kw has its own power as minimum
    assert allocate(10_000, [3_700, 4_200, 4_200], [3_700, 22_000, 22_000]) == [3_700, 6_300, 0]


def test_four_sessions_on_fifty_kw_get_twelve_and_a_half_each() -> None:
    site = SiteAllocator(kw_to_w(50), 4200)
    new_id = ids()
    for i in range(4):
        _w, plan = site.start(f"s{i}", f"P{i}", float(i), 22_000, float(i), new_id)
        ack_all(site, plan.orders)
    assert targets(site) == {f"s{i}": 12_500 for i in range(4)}
    assert site.granted_total() <= 50_000


def test_a_new_session_on_a_full_site_starts_at_zero_then_rises_after_the_lowerings() -> None:
    site = SiteAllocator(50_000, 4200)
    new_id = ids()
    w0, _ = site.start("a", "P0", 0.0, 22_000, 0.0, new_id)
    w1, _ = site.start("b", "P1", 1.0, 22_000, 1.0, new_id)
    assert (w0, w1) == (22_000, 22_000)
    w2, plan = site.start("c", "P2", 2.0, 22_000, 2.0, new_id)
    assert w2 == 0  # a and b must come down first
    assert sorted((o.session_id, o.watts) for o in plan.orders) == [("a", 16_600), ("b", 16_600)]
    assert site.granted_total() == 44_000
    site.acked("a", plan.orders[0].cmd_id)
    assert site.reconcile(3.0, new_id).orders == []
    site.acked("b", plan.orders[1].cmd_id)
    raise_ = site.reconcile(3.0, new_id)
    assert [(o.session_id, o.watts) for o in raise_.orders] == [("c", 16_600)]
    assert site.granted_total() <= 50_000


def test_a_lost_ack_keeps_the_higher_limit_in_force_and_is_sent_again() -> None:
    site = SiteAllocator(50_000, 4200)
    new_id = ids()
    site.start("a", "P0", 0.0, 22_000, 0.0, new_id)
    site.start("b", "P1", 1.0, 22_000, 1.0, new_id)
    _w, plan = site.start("c", "P2", 2.0, 22_000, 2.0, new_id)
    lower_a = next(o for o in plan.orders if o.session_id == "a")
    ack_all(site, [o for o in plan.orders if o.session_id == "b"])
    assert site.reconcile(2.5, new_id).orders == []
    again = site.reconcile(2.0 + RESEND_S, new_id)
    assert [(o.session_id, o.watts) for o in again.orders] == [("a", 16_600)]
    assert again.orders[0].cmd_id != lower_a.cmd_id
    # the ack of the resent command settles the first one too
    assert site.acked("a", again.orders[0].cmd_id)
    assert not site.acked("a", lower_a.cmd_id)
    assert [o.session_id for o in site.reconcile(5.0, new_id).orders] == ["c"]


def test_lowering_the_limit_pauses_the_last_started_and_resumes_them_in_order() -> None:
    site = SiteAllocator(50_000, 4200)
    new_id = ids()
    for i in range(4):
        _w, plan = site.start(f"s{i}", f"P{i}", float(i), 22_000, float(i), new_id)
        ack_all(site, plan.orders)
        ack_all(site, site.reconcile(float(i), new_id).orders)
    site.set_limit(10_000, 4200)
    plan = site.reconcile(10.0, new_id)
    assert plan.paused == ["s2", "s3"]
    assert targets(site) == {"s0": 5_000, "s1": 5_000, "s2": 0, "s3": 0}
    ack_all(site, plan.orders)
    assert site.granted_total() == 10_000
    site.set_limit(15_000, 4200)
    plan = site.reconcile(11.0, new_id)
    assert plan.resumed == ["s2"]
    ack_all(site, plan.orders)
    site.set_limit(50_000, 4200)
    plan = site.reconcile(12.0, new_id)
    assert plan.resumed == ["s3"]
    assert targets(site) == {f"s{i}": 12_500 for i in range(4)}


def test_a_session_that_takes_less_frees_power_for_the_others() -> None:
    site = SiteAllocator(30_000, 4200)
    new_id = ids()
    for i in range(3):
        _w, plan = site.start(f"s{i}", f"P{i}", float(i), 22_000, float(i), new_id)
        ack_all(site, plan.orders)
        ack_all(site, site.reconcile(float(i), new_id).orders)
    assert site.report_demand("s0", 6_000)
    assert not site.report_demand("s0", 6_000)
    ack_all(site, site.reconcile(5.0, new_id).orders)
    assert targets(site) == {"s0": 6_000, "s1": 12_000, "s2": 12_000}


def test_a_blocked_session_is_held_at_zero() -> None:
    site = SiteAllocator(50_000, 4200)
    new_id = ids()
    site.start("a", "P0", 0.0, 22_000, 0.0, new_id)
    assert site.block("a")
    plan = site.reconcile(1.0, new_id)
    assert [(o.session_id, o.watts) for o in plan.orders] == [("a", 0)]
    # (ignored below) the slot exists: the test just created it
    assert site.slot("a").state is SlotState.BLOCKED  # type: ignore[union-attr]


def test_fair_detects_an_unfair_split() -> None:
    assert fair(50_000, [(12_500, 22_000, 4200)] * 4)
    assert not fair(50_000, [(10_000, 22_000, 4200), (15_000, 22_000, 4200)])
    assert not fair(50_000, [(10_000, 22_000, 4200), (10_000, 22_000, 4200)])  # power left over


class AllocatorMachine(RuleBasedStateMachine):
    """Any sequence of inputs keeps the site's guarantees."""

    def __init__(self) -> None:
        super().__init__()
        self.site = SiteAllocator(50_000, 4200)
        self.bound = 50_000  # the limit the granted sum must respect (see the module)
        self.now = 0.0
        self.counter = itertools.count(1)
        self.next_session = 0
        self.inflight: list[LimitOrder] = []
        self.log: list[tuple[str, object]] = []
        self.pause_queue: list[str] = []  # the model of first-paused-first

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.counter)}"

    def _apply(self, plan: Plan) -> None:
        for sid in plan.resumed:
            assert self.pause_queue and self.pause_queue.pop(0) == sid
        self.pause_queue.extend(plan.paused)
        self.inflight.extend(plan.orders)
        if self.site.granted_total() <= self.site.limit_w:
            self.bound = self.site.limit_w

    def _step(self) -> None:
        self.now += 0.5
        self._apply(self.site.reconcile(self.now, self.new_id))

    @rule(nominal=st.sampled_from([3_700, 7_400, 11_000, 22_000, 50_000]))
    def start(self, nominal: int) -> None:
        sid = f"s{self.next_session:03d}"
        self.next_session += 1
        self.now += 0.5
        self.log.append(("start", (sid, nominal)))
        w, plan = self.site.start(sid, "P" + sid, self.now, nominal, self.now, self.new_id)
        assert 0 <= w <= nominal
        self._apply(plan)

    @precondition(lambda self: len(self.site) > 0)
    @rule(data=st.data())
    def end(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(s.session_id for s in self.site.slots())))
        self.log.append(("end", sid))
        assert self.site.remove(sid)
        self.inflight = [o for o in self.inflight if o.session_id != sid]
        if sid in self.pause_queue:
            self.pause_queue.remove(sid)
        self._step()

    @rule(kw=st.integers(min_value=1, max_value=120))
    def change_limit(self, kw: int) -> None:
        self.log.append(("limit", kw))
        new = kw * 1000
        if new >= self.bound:
            self.bound = new
        self.site.set_limit(new, 4200)
        self._step()

    @precondition(lambda self: len(self.site) > 0)
    @rule(data=st.data(), fraction=st.floats(min_value=0.0, max_value=1.0))
    def demand(self, data: st.DataObject, fraction: float) -> None:
        sid = data.draw(st.sampled_from(sorted(s.session_id for s in self.site.slots())))
        slot = self.site.slot(sid)
        assert slot is not None
        self.log.append(("demand", (sid, fraction)))
        self.site.report_demand(sid, int(slot.nominal_w * fraction))
        self._step()

    @precondition(lambda self: len(self.inflight) > 0)
    @rule(data=st.data(), lose=st.booleans())
    def ack_or_lose(self, data: st.DataObject, lose: bool) -> None:
        i = data.draw(st.integers(min_value=0, max_value=len(self.inflight) - 1))
        order = self.inflight.pop(i)
        if not lose:
            self.site.acked(order.session_id, order.cmd_id)
        self._step()

    @rule()
    def time_passes(self) -> None:
        self.now += RESEND_S
        self._apply(self.site.reconcile(self.now, self.new_id))

    @invariant()
    def never_over_the_limit(self) -> None:
        assert self.site.granted_total() <= self.bound
        assert self.site.allocated_total() <= self.site.limit_w

    @invariant()
    def running_sessions_get_their_minimum_or_are_paused(self) -> None:
        for s in self.site.slots():
            if s.state is SlotState.RUNNING:
                assert s.target_w >= s.min_w
            else:
                assert s.target_w == 0

    @invariant()
    def max_min_fair(self) -> None:
        running = [s for s in self.site.slots() if s.state is SlotState.RUNNING]
        assert fair(self.site.limit_w, [(s.target_w, s.demand_w, s.min_w) for s in running])

    @invariant()
    def deterministic(self) -> None:
        """Replaying the inputs (all acks given) on a fresh site gives the same targets."""
        replay = SiteAllocator(50_000, 4200)
        counter = itertools.count(1)

        def new_id(prefix: str) -> str:
            return f"{prefix}-{next(counter)}"

        t = 0.0
        for kind, arg in self.log:
            t += 0.5
            if kind == "start":
                # (ignored below) Hypothesis draws a tuple for this step kind
                sid, nominal = arg  # type: ignore[misc]
                replay.start(sid, "P" + sid, t, nominal, t, new_id)
            elif kind == "end":
                replay.remove(arg)
            elif kind == "limit":
                # (ignored below) Hypothesis draws an int for this step kind
                replay.set_limit(int(arg) * 1000, 4200)  # type: ignore[call-overload]
            else:
                # (ignored below) Hypothesis draws a tuple for this step kind
                sid, fraction = arg  # type: ignore[misc]
                slot = replay.slot(sid)
                assert slot is not None
                replay.report_demand(sid, int(slot.nominal_w * fraction))
            replay.reconcile(t, new_id)
        mine = {s.session_id: (s.state, s.target_w) for s in self.site.slots()}
        theirs = {s.session_id: (s.state, s.target_w) for s in replay.slots()}
        assert mine == theirs

    @invariant()
    def paused_sessions_are_the_queue(self) -> None:
        paused = {s.session_id for s in self.site.slots() if s.state is SlotState.PAUSED}
        assert paused == set(self.pause_queue)


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
