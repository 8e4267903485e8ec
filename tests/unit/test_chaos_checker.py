"""The chaos run's pure parts: the seeded fault plan and the invariant checker."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.chaos import checker, faults
from tests.chaos.checker import Facts, RegionFacts

SERVICES = ["broker", "broker-ssa", "billing-regions", "bridge-fsa", "fleet", "nats",
            "postgres", "web", "tail"]  # fmt: skip


@given(st.integers(0, 2**31), st.floats(10, 600))
def test_a_plan_depends_on_its_seed_alone_and_keeps_its_limits(seed: int, seconds: float) -> None:
    plan = faults.plan(seed, seconds, SERVICES)
    assert plan == faults.plan(seed, seconds, list(reversed(SERVICES)))
    for f in plan:
        assert faults.role_of(f.service) is not None  # web and tail are left alone
        assert f.kind in faults.ROLES[faults.role_of(f.service) or ""]
        assert 0 <= f.at < seconds and f.ends <= seconds + 1e-6
        in_force = [g for g in plan if g.at <= f.at < g.ends]
        assert len(in_force) <= 2
        assert len({g.service for g in in_force}) == len(in_force)


def test_a_plan_covers_every_kind_over_a_long_run() -> None:
    kinds = {f.kind for f in faults.plan(7, 1200, SERVICES)}
    assert kinds == set(faults.Kind)


class FakeDocker:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, args: Any) -> None:
        self.calls.append(list(args))


def test_the_injector_undoes_each_fault_and_heals_what_is_left() -> None:
    docker, lines = FakeDocker(), []
    inj = faults.Injector({"broker": "c1", "nats": "c2", "fleet": "c3"}, "net", lines.append,
                          docker)  # fmt: skip
    kill = faults.Fault(0, faults.Kind.KILL, "broker", 1)
    cut = faults.Fault(0, faults.Kind.CUT, "fleet", 1)
    inj.begin(kill)
    inj.begin(faults.Fault(0, faults.Kind.RESTART, "nats", 0))
    inj.begin(cut)
    inj.end(kill)
    inj.heal()
    assert docker.calls == [
        ["kill", "-s", "KILL", "c1"], ["restart", "-t", "2", "c2"],
        ["network", "disconnect", "net", "c3"], ["start", "c1"],
        ["network", "connect", "--alias", "fleet", "net", "c3"],
    ]  # fmt: skip
    assert inj.in_force == {} and inj.counts == {"kill": 1, "restart": 1, "cut": 1}
    assert [ln["kind"] for ln in lines] == ["fault", "fault", "fault", "heal", "heal"]


# --- the checker ---------------------------------------------------------------------


def ev(seq: int, topic: str, ts: float = 0.0, **data: Any) -> dict[str, Any]:
    return {"seq": seq, "ts": ts, "topic": topic, "data": data}


def line(t: float, kind: str, who: str = "V1", type_: str = "", **data: Any) -> dict[str, Any]:
    return {"t": t, "who": who, "region": "fsa", "kind": kind, "type": type_, "data": data}


def good_run() -> Facts:
    """A trip that was reserved, served, completed and billed once."""
    events = [
        ev(1, "reservation.created", 1, reservation_id="R1", vehicle_id="V1", point_id="P"),
        ev(2, "reservation.turn", 2, reservation_id="R1", vehicle_id="V1", point_id="P"),
        ev(3, "charging.started", 3, session_id="S1", vehicle_id="V1", point_id="P",
           reservation_id="R1"),
        ev(4, "charging.completed", 10, session_id="S1", vehicle_id="V1", point_id="P"),
    ]  # fmt: skip
    journal = [
        line(0.5, "connected"),
        line(1, "reply", type_="reserva_response", code="reserved", reservation_id="R1"),
        line(3, "reply", type_="chegada_response", code="started", session_id="S1"),
        line(10.1, "push", type_="custo_final", session_id="S1"),
        {"t": 15, "who": "V1", "region": "fsa", "kind": "send", "type": "custos", "req": 9},
        {"t": 15.1, "who": "V1", "region": "fsa", "kind": "reply", "type": "extrato", "req": 9},
        line(20, "done"),
        {"t": 5, "who": "broker", "region": "", "kind": "fault", "type": "kill"},
    ]
    snapshot = {"seq": 4, "points": [{"id": "P", "estado": "disponivel"}], "queues": {},
                "sessions": []}  # fmt: skip
    accounts = {"V1": {"sessoes": [{"session_id": "S1"}]}}
    region = RegionFacts(events, snapshot, accounts, [1, 2, 3, 4])
    return Facts(1, journal, {"fsa": region}, ["S1"], 0, {"broker": "running/healthy"},
                 ["broker"])  # fmt: skip


def checks(facts: Facts) -> list[str]:
    return [a.check for a in checker.check(facts).anomalies]


def test_a_clean_run_has_no_anomaly_and_counts_its_figures() -> None:
    report = checker.check(good_run())
    assert report.ok, report.anomalies
    assert report.figures["trips"] == 1 and report.figures["bills"] == 1
    assert report.figures["faults"] == {"kill": 1}
    assert report.figures["reservations_confirmed"] == 1


def test_a_confirmed_reservation_that_vanished_is_found() -> None:
    facts = good_run()
    facts.regions["fsa"].events = [e for e in facts.regions["fsa"].events
                                   if e["topic"] != "charging.started"]  # fmt: skip
    facts.regions["fsa"].stream_seqs = [1, 2, 3]
    facts.regions["fsa"].events[2]["seq"] = 3
    facts.regions["fsa"].snapshot["seq"] = 3
    found = checker.check(facts).anomalies
    assert any(a.check == "reservation" and "silently gone" in a.detail for a in found)


def test_a_reservation_told_but_never_recorded_is_found() -> None:
    facts = good_run()
    facts.journal.append(line(2, "reply", type_="reserva_response", code="reserved",
                              reservation_id="R9"))  # fmt: skip
    anomaly = next(a for a in checker.check(facts).anomalies if a.check == "reservation")
    assert "R9" in anomaly.keys and "never recorded" in anomaly.detail


def test_double_bills_anywhere_are_found() -> None:
    for where in ("ledger", "accounts", "push", "event"):
        facts = good_run()
        region = facts.regions["fsa"]
        if where == "ledger":
            facts.ledger_sessions.append("S1")
        elif where == "accounts":
            region.accounts["V1"]["sessoes"].append({"session_id": "S1"})
        elif where == "push":
            facts.journal.append(line(10.2, "push", type_="custo_final", session_id="S1"))
        else:
            region.events.append(ev(5, "charging.completed", 11, session_id="S1",
                                    vehicle_id="V1", point_id="P"))  # fmt: skip
            region.stream_seqs.append(5)
            region.snapshot["seq"] = 5
        assert "bill" in checks(facts), where


def test_a_connected_driver_without_its_bill_and_a_missing_ledger_row_are_found() -> None:
    facts = good_run()
    facts.journal = [ln for ln in facts.journal if ln.get("type") != "custo_final"]
    facts.ledger_sessions = []
    details = [a.detail for a in checker.check(facts).anomalies]
    assert any("carried a later reply but no custo_final" in d for d in details)
    assert any("0 times in the ledger" in d for d in details)


def test_a_disconnected_driver_need_not_get_its_bill_pushed() -> None:
    facts = good_run()
    facts.journal = [ln for ln in facts.journal if ln.get("type") != "custo_final"]
    facts.journal.append(line(8, "disconnected"))
    facts.journal.sort(key=lambda ln: ln["t"])
    assert checker.check(facts).ok


def test_a_connection_that_looked_open_but_carried_nothing_later_proves_nothing() -> None:
    """Cut off the network, a connection stays "open" at the driver's end while the broker's
    pushes go nowhere: without a later reply on it, a missing push is no anomaly."""
    facts = good_run()
    facts.journal = [ln for ln in facts.journal
                     if ln.get("type") not in ("custo_final", "custos", "extrato")]  # fmt: skip
    assert checker.check(facts).ok


def test_gaps_repeats_and_a_lagging_stream_are_found() -> None:
    facts = good_run()
    facts.regions["fsa"].stream_seqs = [1, 2, 2, 4]
    facts.regions["fsa"].events.pop(1)
    details = [a.detail for a in checker.check(facts).anomalies]
    assert any("event history: missing seqs [2]" in d for d in details)
    assert any("stream: repeated seqs [2]" in d for d in details)


def test_stuck_points_sessions_crashes_and_reconcile_are_found() -> None:
    facts = good_run()
    snap = facts.regions["fsa"].snapshot
    snap["points"] = [{"id": "P", "estado": "carregando", "session_id": None},
                      {"id": "Q", "estado": "reservado"}]  # fmt: skip
    facts.regions["fsa"].events.append(ev(5, "charging.started", 12, session_id="S2",
                                          vehicle_id="V2", point_id="Q"))  # fmt: skip
    facts.regions["fsa"].stream_seqs.append(5)
    snap["seq"] = 5
    facts.containers = {"broker": "exited"}
    facts.reconcile_rc = 1
    assert sorted(checks(facts)) == ["point", "point", "process", "reconcile", "session"]


def test_the_history_of_an_anomaly_holds_only_its_ids_and_the_faults_meanwhile() -> None:
    facts = good_run()
    facts.ledger_sessions = []
    anomaly = next(a for a in checker.check(facts).anomalies if a.check == "bill")
    history = checker.history_of(anomaly, facts)
    assert any("charging.completed" in h for h in history)
    assert any("FAULT fault kill broker" in h for h in history)
    assert any("V1 connected" in h for h in history)
    assert not any("reservation.turn" in h for h in history)  # names neither S1 nor V1
    assert [float(h.split()[0]) for h in history] == sorted(float(h.split()[0]) for h in history)
