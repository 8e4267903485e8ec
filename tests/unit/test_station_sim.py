"""The pure charging model (station.sim) driven with a fake clock."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.codec import encode_datagram
from common.messages import (
    MAX_DATAGRAM_BYTES,
    Hold,
    Limit,
    Release,
    SessionAck,
    Start,
    StationToBroker,
    StatusDatagram,
    Stop,
)
from common.timeutil import parse_timestamp
from station.sim import (
    HOLD_GRACE_S,
    RESEND_S,
    Charger,
    State,
    energy_wh,
    power_at,
    seconds_to_reach,
    soc_after,
)

T0 = 1_700_000_000.0


def charger(speed: float = 1.0, power_kw: float = 50.0) -> Charger:
    c = Charger("CP01", -12.0, -38.0, power_kw=power_kw, price_kwh=2.0, speed=speed)
    c.advance(T0)
    return c


def start(cmd_id: str = "c1", sid: str = "S1", lo: float = 20.0, hi: float = 80.0) -> Start:
    return Start(
        cmd_id=cmd_id,
        session_id=sid,
        vehicle_id="CAR1",
        nivel_bateria=lo,
        nivel_carregar=hi,
        capacidade_kwh=60.0,
    )


def state(c: Charger) -> State:
    """The state, read through a call (keeps mypy from narrowing across mutations)."""
    return c.state


def ack_of(messages: list[dict[str, object]]) -> dict[str, object]:
    acks = [m for m in messages if m["type"] == "ack"]
    assert len(acks) == 1
    return acks[0]


# --- the power curve and its closed form ------------------------------------------------


def test_power_is_rated_below_80_and_tapers_to_20_percent_at_100() -> None:
    assert power_at(10.0, 50.0) == 50.0
    assert power_at(80.0, 50.0) == 50.0
    assert power_at(90.0, 50.0) == pytest.approx(30.0)
    assert power_at(100.0, 50.0) == pytest.approx(10.0)


def test_linear_phase_is_exact() -> None:
    # 50 kW into 60 kWh: 30 kWh (20 % -> 70 %) take 0.6 h
    assert seconds_to_reach(20.0, 70.0, 50.0, 60.0) == pytest.approx(2160.0)
    assert soc_after(20.0, 2160.0, 50.0, 60.0) == pytest.approx(70.0)


def test_taper_matches_fine_numeric_integration() -> None:
    soc, dt = 70.0, 0.01
    for _ in range(int(3000 / dt)):
        soc += power_at(soc, 50.0) / 60.0 * 100.0 / 3600.0 * dt
    assert soc_after(70.0, 3000.0, 50.0, 60.0) == pytest.approx(soc, abs=1e-4)


@given(
    lo=st.floats(0.0, 99.0),
    span=st.floats(0.01, 100.0),
    power=st.floats(1.0, 350.0),
    cap=st.floats(5.0, 200.0),
)
def test_seconds_to_reach_inverts_soc_after(
    lo: float, span: float, power: float, cap: float
) -> None:
    hi = min(100.0, lo + span)
    t = seconds_to_reach(lo, hi, power, cap)
    assert t >= 0.0
    assert soc_after(lo, t, power, cap) == pytest.approx(hi, abs=1e-6)


# --- sessions -----------------------------------------------------------------------------


def test_session_reaches_target_with_exact_energy_and_timestamps() -> None:
    c = charger(speed=60.0)
    step = c.handle(start(lo=20.0, hi=90.0), T0)
    assert ack_of(step.messages) == {"type": "ack", "cmd_id": "c1", "ok": True}
    assert step.changed and state(c) is State.CARREGANDO
    duration = seconds_to_reach(20.0, 90.0, 50.0, 60.0) / 60.0  # real seconds
    done: list[dict[str, object]] = []
    t = T0
    while not done:  # irregular steps must not matter
        t += 0.37
        done = [m for m in c.advance(t).messages if m["type"] == "session_complete"]
    msg = done[0]
    assert msg["energia_kwh"] == 42.0  # (90 - 20) / 100 * 60
    assert msg["nivel_inicial"] == 20.0 and msg["nivel_final"] == 90.0
    assert msg["reason"] == "target_reached"
    ended = parse_timestamp(str(msg["ended_at"]))
    assert ended == pytest.approx(T0 + duration, abs=0.002)
    assert parse_timestamp(str(msg["started_at"])) == pytest.approx(T0, abs=0.001)
    assert state(c) is State.DISPONIVEL and c.session is None


def test_energy_so_far_is_integer_wh_and_grows() -> None:
    c = charger(speed=60.0)
    c.handle(start(lo=10.0, hi=100.0), T0)
    last = -1
    for k in range(1, 60):
        c.advance(T0 + k)
        assert c.session is not None
        wh = c.session.energy_wh
        assert isinstance(wh, int) and wh > last
        assert wh == energy_wh(10.0, c.session.soc, 60.0)
        last = wh
    d = c.datagram("b", 1, 2.0, T0 + 60)
    assert d["energia_kwh"] == last / 1000.0 and d["estado"] == "carregando"
    assert d["session_id"] == "S1" and d["vehicle_id"] == "CAR1" and d["available"] is False


def test_stop_ends_early_with_energy_so_far() -> None:
    c = charger(speed=1.0)
    c.handle(start(lo=20.0, hi=80.0), T0)
    step = c.handle(Stop(cmd_id="c2", session_id="S1"), T0 + 360.0)  # 0.1 h at 50 kW = 5 kWh
    assert ack_of(step.messages)["ok"] is True
    done = [m for m in step.messages if m["type"] == "session_complete"]
    assert done[0]["reason"] == "stopped"
    assert done[0]["energia_kwh"] == 5.0
    assert done[0]["nivel_final"] == pytest.approx(20.0 + 5.0 / 60.0 * 100.0, abs=1e-3)
    assert state(c) is State.DISPONIVEL


def test_fault_ends_session_with_reason_fault_and_refuses_commands() -> None:
    c = charger(speed=1.0)
    c.handle(start(), T0)
    step = c.fault(T0 + 72.0)  # 1 kWh
    done = [m for m in step.messages if m["type"] == "session_complete"]
    assert done[0]["reason"] == "fault" and done[0]["energia_kwh"] == 1.0
    assert step.changed and state(c) is State.INDISPONIVEL
    assert c.datagram("b", 2, 2.0, T0)["estado"] == "indisponivel"
    refused = c.handle(start("c9", "S2"), T0 + 80)
    assert ack_of(refused.messages)["ok"] is False
    assert "unavailable" in str(ack_of(refused.messages)["error"])
    hold = Hold(cmd_id="c10", reservation_id="R1", vehicle_id="CAR2", until=T0 + 600)
    assert ack_of(c.handle(hold, T0 + 81).messages)["ok"] is False
    assert c.recover(T0 + 90).changed and state(c) is State.DISPONIVEL
    assert ack_of(c.handle(start("c11", "S3"), T0 + 91).messages)["ok"] is True


def test_hold_and_release() -> None:
    c = charger()
    hold = Hold(cmd_id="h1", reservation_id="R1", vehicle_id="CAR2", until=T0 + 600)
    step = c.handle(hold, T0)
    assert ack_of(step.messages)["ok"] is True and step.changed
    assert state(c) is State.RESERVADO
    d = c.datagram("b", 1, 2.0, T0)
    assert d["estado"] == "disponivel" and d["available"] is False and d["queue_size"] == 1
    wrong = c.handle(Release(cmd_id="r0", reservation_id="R9"), T0 + 1)
    assert ack_of(wrong.messages)["ok"] is False and state(c) is State.RESERVADO
    ok = c.handle(Release(cmd_id="r1", reservation_id="R1"), T0 + 2)
    assert ack_of(ok.messages)["ok"] is True and state(c) is State.DISPONIVEL


def test_start_consumes_the_hold() -> None:
    c = charger()
    c.handle(Hold(cmd_id="h1", reservation_id="R1", vehicle_id="CAR1", until=T0 + 600), T0)
    assert ack_of(c.handle(start(), T0 + 1).messages)["ok"] is True
    assert c.hold is None and state(c) is State.CARREGANDO


def test_a_hold_whose_release_was_lost_expires_locally() -> None:
    c = charger()
    c.handle(Hold(cmd_id="h1", reservation_id="R1", vehicle_id="CAR1", until=T0 + 10), T0)
    assert not c.advance(T0 + 10 + HOLD_GRACE_S - 1).changed
    assert c.advance(T0 + 10 + HOLD_GRACE_S + 1).changed and state(c) is State.DISPONIVEL


def test_refusals() -> None:
    c = charger()
    c.handle(start(), T0)
    busy = c.handle(start("c2", "S2"), T0 + 1)
    assert ack_of(busy.messages)["ok"] is False and "busy" in str(ack_of(busy.messages)["error"])
    assert c.session is not None and c.session.session_id == "S1"
    unknown = c.handle(Stop(cmd_id="c3", session_id="nope"), T0 + 2)
    assert ack_of(unknown.messages)["ok"] is False and not unknown.changed
    hold = c.handle(Hold(cmd_id="c4", reservation_id="R", vehicle_id="V", until=T0), T0 + 3)
    assert ack_of(hold.messages)["ok"] is False
    fresh = charger()
    bad = fresh.handle(start("c5", "S5", lo=80.0, hi=50.0), T0 + 4)
    assert ack_of(bad.messages)["ok"] is False and fresh.state is State.DISPONIVEL
    assert c.refused == 3 and fresh.refused == 1
    assert fresh.refuse("c6", "malformed")["ok"] is False


def test_duplicate_command_gets_the_same_ack_without_a_second_effect() -> None:
    c = charger()
    first = c.handle(start(), T0)
    again = c.handle(start(), T0 + 1)
    assert again.messages == [ack_of(first.messages)] and not again.changed


def test_completion_is_resent_until_session_ack() -> None:
    c = charger(speed=1.0)
    c.handle(start(), T0)
    done = c.handle(Stop(cmd_id="c2", session_id="S1"), T0 + 10)
    msg = next(m for m in done.messages if m["type"] == "session_complete")
    assert c.due_completions(T0 + 10 + RESEND_S - 0.1) == []
    assert c.due_completions(T0 + 10 + RESEND_S) == [msg]
    assert c.due_completions(T0 + 10 + RESEND_S + 0.5) == []
    # a stop for the ended session is acknowledged (it is over), not refused
    assert ack_of(c.handle(Stop(cmd_id="c3", session_id="S1"), T0 + 13).messages)["ok"]
    # a start for it is refused: it cannot run twice
    assert not ack_of(c.handle(start("c4", "S1"), T0 + 13).messages)["ok"]
    c.handle(SessionAck(session_id="S1"), T0 + 14)
    assert c.pending == {} and c.due_completions(T0 + 100) == []


def test_time_going_backwards_changes_nothing() -> None:
    c = charger(speed=60.0)
    c.handle(start(), T0)
    c.advance(T0 + 10)
    assert c.session is not None
    soc = c.session.soc
    c.advance(T0 + 5)
    assert c.session.soc == soc


@settings(max_examples=50)
@given(steps=st.lists(st.floats(0.0, 50.0), min_size=1, max_size=40))
def test_soc_is_monotonic_and_never_passes_target(steps: list[float]) -> None:
    c = charger(speed=60.0)
    c.handle(start(lo=30.0, hi=95.0), T0)
    t, last = T0, 30.0
    for dt in steps:
        t += dt
        c.advance(t)
        soc = c.session.soc if c.session is not None else 95.0
        assert last <= soc <= 95.0 and math.isfinite(soc)
        last = soc


# --- any sequence of commands: invariants and the shared schemas --------------------------

_ids = st.sampled_from(["S1", "S2", "S3"])
_cmd = st.one_of(
    st.builds(
        lambda sid, lo, span: Start(
            cmd_id="", session_id=sid, vehicle_id="CAR1", nivel_bateria=lo,
            nivel_carregar=lo + span, capacidade_kwh=40.0,
        ),
        _ids, st.floats(0.0, 95.0), st.floats(-5.0, 60.0),
    ),
    st.builds(lambda sid: Stop(cmd_id="", session_id=sid), _ids),
    st.builds(
        lambda rid: Hold(cmd_id="", reservation_id=rid, vehicle_id="CAR2", until=T0 + 60.0),
        st.sampled_from(["R1", "R2"]),
    ),
    st.builds(lambda rid: Release(cmd_id="", reservation_id=rid), st.sampled_from(["R1", "R2"])),
    st.builds(lambda sid: SessionAck(session_id=sid), _ids),
    st.just("fault"),
    st.just("recover"),
)  # fmt: skip


@settings(max_examples=150)
@given(script=st.lists(st.tuples(_cmd, st.floats(0.0, 120.0)), max_size=25))
def test_any_command_sequence_keeps_the_invariants(script: list[tuple[object, float]]) -> None:
    c = charger(speed=60.0)
    t = T0
    for n, (cmd, dt) in enumerate(script):
        t += dt
        if cmd == "fault":
            step = c.fault(t)
        elif cmd == "recover":
            step = c.recover(t)
        else:
            assert isinstance(cmd, Start | Stop | Hold | Release | SessionAck)
            if not isinstance(cmd, SessionAck):
                cmd = msgspec.structs.replace(cmd, cmd_id=f"c{n}")
            step = c.handle(cmd, t)
            acks = [m for m in step.messages if m["type"] == "ack"]
            assert len(acks) == (0 if isinstance(cmd, SessionAck) else 1)
        for m in step.messages:  # everything sent fits the shared wire schemas
            msgspec.convert(m, StationToBroker)
        assert (c.session is not None) == (state(c) is State.CARREGANDO)
        assert c.hold is None or state(c) is State.RESERVADO
        assert c.session is None or c.session.soc0 <= c.session.soc <= c.session.target
        d = c.datagram("boot", n + 1, 2.0, t)
        assert len(encode_datagram(d)) <= MAX_DATAGRAM_BYTES
        msgspec.convert(d, StatusDatagram)
    msgspec.convert(c.hello("boot", 2.0), StationToBroker)


def test_a_limited_session_charges_at_its_limit_and_pauses_at_zero() -> None:
    c = Charger("L1", 0.0, 0.0, power_kw=22.0, speed=3600.0)
    t = 1000.0
    c.handle(
        Start(
            cmd_id="c1",
            session_id="s1",
            vehicle_id="V",
            nivel_bateria=10.0,
            nivel_carregar=80.0,
            capacidade_kwh=100.0,
            kw=11.0,
        ),
        t,
    )
    assert c.datagram("b", 1, 2.0, t)["potencia_atual_kw"] == 11.0
    c.advance(t + 1.0)  # one simulated hour at 11 kW
    assert c.session is not None and abs(c.session.energy_wh - 11_000) <= 1
    step = c.handle(Limit(cmd_id="c2", session_id="s1", kw=0.0), t + 1.0)
    assert step.messages[0]["ok"] and step.changed
    c.advance(t + 2.0)  # paused: nothing more
    assert abs(c.session.energy_wh - 11_000) <= 1
    assert c.datagram("b", 2, 2.0, t + 2.0)["potencia_atual_kw"] == 0.0
    c.handle(Limit(cmd_id="c3", session_id="s1", kw=50.0), t + 2.0)  # capped at the point's power
    assert c.datagram("b", 3, 2.0, t + 2.0)["potencia_atual_kw"] == 22.0
    c.advance(t + 2.5)
    assert abs(c.session.energy_wh - 22_000) <= 1
    assert not c.handle(Limit(cmd_id="c4", session_id="zz", kw=1.0), t + 3.0).messages[0]["ok"]
