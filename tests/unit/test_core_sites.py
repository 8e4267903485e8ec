"""Sites through the core (broker/core/sites.py): definitions, refusals, limit
commands with the start, acks, pausing, overdraw, restore, estimates."""

from __future__ import annotations

import math
from typing import Any

from broker.core.site_defs import patterns_overlap
from broker.core.sites import OVERDRAW_STRIKES
from common.errors import SiteRefused
from common.messages import Limit, Start
from tests.support.core_harness import Harness


def site_points(h: Harness, n: int = 4, power: float = 22.0, limites: bool = True) -> None:
    for i in range(n):
        pid = f"S-{i}"
        h.hello(pid, boot=f"b{i}", potencia_kw=power, limites=limites)
        h.point(pid, potencia_kw=power, boot_id=f"b{i}")


def define(h: Harness, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"name": "depot", "limit_kw": 50, "points": ["S-*"], "min_kw": None}
    args.update(kw)
    try:
        reply, fx = h.core.set_site(
            args["name"], args["limit_kw"], args["points"], args["min_kw"], "op", h.now
        )
    except SiteRefused as exc:
        return {"error": exc.message}
    h.apply(fx)
    return reply


def start(h: Harness, vid: str, pid: str) -> tuple[str, float | None, list[Limit]]:
    """Arrive and ack the start; (session, the start's kw, limits sent to others)."""
    fx = h.arrive(vid, pid)
    (st,) = h.commands(fx, Start)
    limits = h.commands(fx, Limit)
    h.ack(pid, st.cmd_id)
    return st.session_id, st.kw, limits


def ack_all(h: Harness, fx: list[Any]) -> list[Any]:
    """Ack every limit in ``fx`` and what the acks cause, until none is left."""
    out: list[Any] = []
    todo = [(e.point_id, e.message) for e in fx if type(e).__name__ == "SendStation"]
    while todo:
        pid, msg = todo.pop(0)
        if isinstance(msg, Limit):
            out.append(msg)
            more = h.ack(pid, msg.cmd_id)
            todo += [(e.point_id, e.message) for e in more if type(e).__name__ == "SendStation"]
    return out


def test_patterns_overlap() -> None:
    assert patterns_overlap("FSA-*", "FSA-01")
    assert patterns_overlap("FSA-*", "F*")
    assert not patterns_overlap("FSA-*", "FSB-*")
    assert not patterns_overlap("CP01", "CP02")


def test_bad_definitions_are_refused_and_nothing_is_stored() -> None:
    h = Harness()
    site_points(h)
    h.hello("OLD", potencia_kw=22.0)  # no "limites"
    h.point("OLD")
    before = dict(h.store)
    for kw, words in (
        ({"limit_kw": math.inf}, "finite"),
        ({"limit_kw": -5}, "above 0"),
        ({"limit_kw": "50"}, "number"),
        ({"limit_kw": True}, "number"),
        ({"limit_kw": 200_000}, "at most"),
        ({"points": []}, "patterns"),
        ({"points": ["A*B"]}, "'*' may only end"),
        ({"points": ["OLD"]}, "cannot take limits"),
        ({"min_kw": 60}, "above the site's limit"),
        ({"name": "two words"}, "spaces"),
    ):
        reply = define(h, **kw)
        assert words in reply["error"], (kw, reply)
    assert define(h)["ok"]
    reply = define(h, name="other", points=["S-1*"])
    assert "overlaps site 'depot'" in reply["error"]
    assert [k for k in h.store if k not in before] == [("meta", "site:depot")]


def test_four_sessions_share_fifty_kw_and_the_next_waits_for_the_lowerings() -> None:
    h = Harness()
    site_points(h)
    assert define(h)["ok"]
    sid0, kw0, _ = start(h, "V0", "S-0")
    assert kw0 == 22.0
    sid1, kw1, _ = start(h, "V1", "S-1")
    assert kw1 == 22.0
    fx = h.arrive("V2", "S-2")
    (st,) = h.commands(fx, Start)
    assert st.kw == 0.0  # raised only once S-0 and S-1 acked their lowering
    lowered = {m.session_id: m.kw for m in h.commands(fx, Limit)}
    assert lowered == {sid0: 16.6, sid1: 16.6}
    h.ack("S-2", st.cmd_id)
    raised = ack_all(h, fx)
    assert [(m.session_id, m.kw) for m in raised[-1:]] == [(st.session_id, 16.6)]
    fx = h.arrive("V3", "S-3")
    (st3,) = h.commands(fx, Start)
    h.ack("S-3", st3.cmd_id)
    ack_all(h, fx)
    (site,) = h.core.sites()["sites"]
    assert [s["kw"] for s in site["sessions"]] == [12.5] * 4
    assert site["in_force_kw"] == 50.0
    alloc = [e.data for e in h.events if e.topic == "site.allocation"]
    assert alloc[-1]["allocated_kw"] == 50.0


def test_lowering_the_limit_pauses_the_last_started_and_status_says_so() -> None:
    h = Harness()
    site_points(h)
    define(h)
    for i in range(4):
        start(h, f"V{i}", f"S-{i}")
        ack_all(h, h.tick(0.1))
    h.tick(0.1)
    reply = define(h, limit_kw=10)
    assert reply["ok"]
    paused = [e.data["vehicle_id"] for e in h.events if e.topic == "charging.paused"]
    assert paused == ["V2", "V3"]
    status = h.reply(h.request("V3", "status")).data["sessao"]
    assert status["estado"] == "aguardando_energia" and status["potencia_kw"] == 0.0
    status = h.reply(h.request("V0", "status")).data["sessao"]
    assert status["estado"] == "carregando" and status["potencia_kw"] == 5.0
    assert status["eta_min"] > 0


def test_a_station_that_keeps_overdrawing_is_held_at_zero() -> None:
    h = Harness()
    site_points(h, n=1)
    define(h, limit_kw=10)
    sid, kw, _ = start(h, "V0", "S-0")
    assert kw == 10.0
    for _n in range(OVERDRAW_STRIKES):
        fx = h.dgram(
            "S-0", boot_id="b0", estado="carregando", session_id=sid, potencia_atual_kw=20.0
        )
    assert [m.kw for m in h.commands(fx, Limit)] == [0.0]
    (event,) = [e.data for e in h.events if e.topic == "site.overdraw"]
    assert event["session_id"] == sid and event["drawn_kw"] == 20.0
    assert h.core.sites()["sites"][0]["overdraws"] == OVERDRAW_STRIKES


def test_sites_survive_a_restart_and_running_sessions_are_lowered_again() -> None:
    h = Harness()
    site_points(h, n=2)
    define(h, limit_kw=30)
    start(h, "V0", "S-0")
    start(h, "V1", "S-1")
    core = h.restored(1.0)
    (site,) = core.sites()["sites"]
    assert site["limit_kw"] == 30.0 and len(site["sessions"]) == 2
    fx = core.tick(h.now + 1.0)
    assert sorted(m.message.kw for m in fx if isinstance(getattr(m, "message", None), Limit)) == [
        15.0,
        15.0,
    ]


def test_removing_a_site_lifts_the_limit() -> None:
    h = Harness()
    site_points(h, n=1)
    define(h, limit_kw=10)
    sid, _kw, _ = start(h, "V0", "S-0")
    reply, fx = h.core.remove_site("depot", "op", h.now)
    h.apply(fx)
    assert reply["ok"]
    assert [(m.session_id, m.kw) for m in h.commands(fx, Limit)] == [(sid, 22.0)]
    assert h.core.sites()["sites"] == []
    assert ("meta", "site:depot") not in h.store


def test_waits_count_the_allocated_power() -> None:
    h = Harness()
    site_points(h, n=2)
    define(h)
    start(h, "V0", "S-0")  # 20 % -> 80 % of 60 kWh: 36 kWh to go

    def wait(pid: str) -> int:
        snap = h.core.snapshot(h.now)
        return int(next(p for p in snap["points"] if p["id"] == pid)["espera_estimada_min"])

    assert wait("S-0") == 36 * 60 // 22 + 1  # alone: its point's 22 kW (99 min)
    define(h, limit_kw=6)
    assert wait("S-0") == 36 * 60 // 6  # 6 kW now: 360 min
    status = h.reply(h.request("V0", "status")).data["sessao"]
    assert status["potencia_kw"] == 6.0 and status["eta_min"] == 360


def test_demand_follows_what_a_settled_session_draws_only() -> None:
    h = Harness()
    site_points(h, n=3)
    define(h, limit_kw=30)
    sid0, _kw, _ = start(h, "V0", "S-0")
    sid1, _kw, _ = start(h, "V1", "S-1")
    fx = h.arrive("V2", "S-2")
    (st,) = h.commands(fx, Start)
    assert st.kw == 0.0  # waits for the two lowerings
    h.ack("S-2", st.cmd_id)
    # it draws nothing yet: that says nothing about its vehicle (not settled)
    h.dgram("S-2", boot_id="b2", estado="carregando", session_id=st.session_id,
            potencia_atual_kw=0.0)  # fmt: skip
    ack_all(h, fx)
    kws = {s["session_id"]: s["kw"] for s in h.core.sites()["sites"][0]["sessions"]}
    assert kws == {sid0: 10.0, sid1: 10.0, st.session_id: 10.0}
    # settled and drawing 4 kW: its vehicle takes less, the others get the rest
    fx = h.dgram("S-2", boot_id="b2", estado="carregando", session_id=st.session_id,
                 potencia_atual_kw=4.0)  # fmt: skip
    ack_all(h, fx)
    kws = {s["session_id"]: s["kw"] for s in h.core.sites()["sites"][0]["sessions"]}
    assert kws[st.session_id] == 4.9 and kws[sid0] == kws[sid1] == 12.5


def test_a_tariffed_session_splits_its_charging_periods_where_its_allocation_changes() -> None:
    from datetime import UTC

    from tests.unit.test_core_tariffs_flow import PER_MINUTE, final, setup

    h = Harness(tz=UTC)
    site_points(h, n=1)
    setup(h, PER_MINUTE, pattern="S-*")
    define(h, limit_kw=20)
    sid, kw, _ = start(h, "V0", "S-0")
    assert kw == 20.0
    h.at(600)
    define(h, limit_kw=10)  # the allocation halves: a new charging period
    h.at(600)
    cdr = final(h.complete("S-0", sid, "V0", energy=5.0))["cdr"]
    periods = cdr["charging_periods"]
    assert [p["dimensions"][2] for p in periods] == [
        {"type": "MAX_POWER", "volume": 20.0},
        {"type": "MAX_POWER", "volume": 10.0},
    ]
    assert [p["dimensions"][0]["volume"] for p in periods] == [24.0, 12.0]
