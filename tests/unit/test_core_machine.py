"""The Core facade: start, snapshot, stats and the persistence round trip."""

from __future__ import annotations

import pytest

from broker.core import Core, CoreConfig
from broker.core.effects import Persist, Publish, Reply, SendStation
from common.errors import StoreError
from common.messages import Ack, SessionAck, SessionComplete, Start
from tests.support.core_harness import Harness, comparable


def busy_harness() -> tuple[Harness, str]:
    h = Harness(queue_capacity=3)
    h.point("CP01", preco_kwh=1.5)
    h.point("CP02", lat=-12.3, potencia_kw=22.0)
    h.reserve("CAR1", "CP01", eta=5)
    h.reserve("CAR2", "CP01")
    h.reserve("CAR3", "CP01")
    sid = h.start_charging("CAR9", "CP02")
    h.reserve("CAR4", "CP02", eta=1)
    done = h.start_charging("CAR1", "CP01")
    h.complete("CP01", done, "CAR1", 20, 55)
    return h, sid


def test_core_config_defaults() -> None:
    c = CoreConfig()
    assert (c.queue_capacity, c.hold_s, c.offline_after_s, c.offline_grace_s) == (5, 600, 6, 120)
    assert (c.ack_timeout_s, c.heartbeat_s, c.low_battery) == (5.0, 1.0, 20.0)
    with pytest.raises(AttributeError):
        # (ignored below) a frozen config changed on purpose to test a shorter hold
        c.hold_s = 1.0  # type: ignore[misc]


def test_restore_rebuilds_queues_sessions_and_accounts() -> None:
    h, _sid = busy_harness()
    before = h.core.snapshot(h.now)
    core = h.restored()
    after = core.snapshot(h.now)
    assert after["seq"] == before["seq"] == h.events[-1].seq
    assert comparable(after) == comparable(before)
    assert core.accounts() == h.core.accounts()
    assert {p["estado"] for p in after["points"]} == {"offline"}
    assert core.stats()["points_online"] == 0


def test_seq_continues_after_restore() -> None:
    h, _sid = busy_harness()
    core = h.restored()
    fx = core.start(h.now)
    assert [e.event.seq for e in fx if hasattr(e, "event")] == [h.events[-1].seq + 1]


def test_deadlines_continue_after_restore() -> None:
    h, _ = busy_harness()
    turn = h.core.snapshot(h.now)["queues"]["CP01"][0]
    core = h.restored(dt=1.0)
    assert core.snapshot(h.now)["queues"]["CP01"][0]["expira_em"] == turn["expira_em"]
    due = core.next_due()
    assert due is not None and due <= h.now + 1.0 + 120.0


def test_restored_queue_cancelled_after_grace_unless_heard() -> None:
    h, sid = busy_harness()
    core = h.restored()
    start = h.now
    assert core.tick(start + 119.0) == []
    fx = core.tick(start + 120.0)
    motives = {p.data["motivo"] for p in h.pushes(fx, "reserva_cancelada")}
    assert motives == {"point_offline"}
    completed = [
        e for e in fx if getattr(e, "event", None) and e.event.topic == "charging.completed"
    ]
    assert [c.event.data["session_id"] for c in completed] == [sid]


def test_restored_point_heard_again_keeps_everything() -> None:
    h, _ = busy_harness()
    core = h.restored()
    from common.messages import StatusDatagram

    for pid, lat in (("CP01", -12.26), ("CP02", -12.3)):
        fx = core.handle_datagram(
            StatusDatagram(id=pid, latitude=lat, longitude=-38.96, boot_id="new", seq=1), h.now
        )
        assert any(getattr(e, "event", None) and e.event.topic == "point.online" for e in fx)
    # the grace period that started at restore was cleared when they were heard;
    # they go offline again 6 s later, so a new grace period ends at +126 s
    fx = core.tick(h.now + 121.0)
    assert {getattr(e, "type", "") for e in fx}.isdisjoint({"reserva_cancelada"})
    assert core.stats()["queues"] == {"CP01": 2, "CP02": 1}


def test_bad_record_raises_store_error() -> None:
    core = Core(CoreConfig(), lambda p: p)
    with pytest.raises(StoreError):
        core.restore([("point", "X", {"id": "X"})], 0, 0.0)


def test_stats_shape() -> None:
    h, _ = busy_harness()
    st = h.core.stats()
    assert st["points"] == 2 and st["points_online"] == 2 and st["sessions_active"] == 1
    assert st["queues"] == {"CP01": 2, "CP02": 1} and st["reservations"] == 3
    assert st["datagrams_stale"] == 0 and st["last_seq"] == h.core.last_seq


def test_energy_reported_before_an_outage_survives_a_restart() -> None:
    h = Harness()
    h.point("CP01")
    sid = h.start_charging("CAR1")
    h.dgram("CP01", estado="carregando", session_id=sid, energia_kwh=7.25)
    h.tick(6.0)
    core = h.restored()
    fx = core.tick(h.now + 120.0)
    done = [e.event.data for e in fx if getattr(e, "event", None)]
    billed = [d for d in done if d.get("session_id") == sid and "cost" in d]
    assert billed and billed[0]["energy_kwh"] == 7.25 and billed[0]["reason"] == "fault"


def test_restored_session_survives_its_station_but_not_a_new_station_process() -> None:
    from common.messages import StatusDatagram

    h = Harness()
    h.point("CP01")
    h.point("CP02", lat=-12.3)
    s1 = h.start_charging("CAR1", "CP01")
    s2 = h.start_charging("CAR2", "CP02")
    core = h.restored()
    same = StatusDatagram(id="CP01", latitude=-12.26, longitude=-38.96, boot_id="boot-CP01", seq=99)
    fx = core.handle_datagram(same, h.now)
    assert not [e for e in fx if getattr(e, "event", None) and e.event.topic.startswith("charging")]
    other = StatusDatagram(id="CP02", latitude=-12.3, longitude=-38.96, boot_id="fresh", seq=1)
    fx = core.handle_datagram(other, h.now)
    done = [e.event.data for e in fx if getattr(e, "event", None)]
    closed = [d["session_id"] for d in done if d.get("reason") == "fault"]
    assert closed == [s2]
    assert [s["session_id"] for s in core.snapshot(h.now)["sessions"]] == [s1]


def _crash_between_start_and_ack() -> tuple[Harness, Core, str, str]:
    """A walk-in arrival whose ``start`` went out, then the broker crashed before the ack."""
    h = Harness()
    h.hello("CP01")
    h.point("CP01")
    fx = h.arrive("CARX")
    (start,) = h.commands(fx, Start)
    assert h.replies(fx) == []  # nothing confirmed before the station acks
    return h, h.restored(dt=2.0), str(start.cmd_id), str(start.session_id)


def test_start_sent_before_a_crash_is_billed_when_the_station_completes_it() -> None:
    h, core, _cmd, sid = _crash_between_start_and_ack()
    later = h.now + 30.0
    fx = core.handle_station(
        "CP01",
        SessionComplete(
            session_id=sid, vehicle_id="CARX", energia_kwh=36.0, nivel_inicial=20,
            nivel_final=80, started_at=0.0, ended_at=1.0, reason="target_reached",
        ),
        later,
    )  # fmt: skip
    completed = [e.event.data for e in fx if isinstance(e, Publish)
                 if e.event.topic == "charging.completed"]  # fmt: skip
    assert len(completed) == 1 and completed[0]["session_id"] == sid
    assert completed[0]["cost"] == 72.0
    assert core.accounts()["CARX"]["total"] == 72.0
    assert SessionAck(session_id=sid) in [e.message for e in fx if isinstance(e, SendStation)]


def test_start_sent_before_a_crash_becomes_a_session_on_a_late_ack() -> None:
    h, core, cmd, sid = _crash_between_start_and_ack()
    fx = core.handle_station("CP01", Ack(cmd_id=cmd, ok=True), h.now + 10.0)
    assert "charging.started" in [e.event.topic for e in fx if isinstance(e, Publish)]
    assert [s["session_id"] for s in core.snapshot(h.now)["sessions"]] == [sid]
    assert not any(isinstance(e, Reply) for e in fx)  # its requester is gone


def test_start_sent_before_a_crash_is_forgotten_after_the_grace_period() -> None:
    h, core, _cmd, _sid = _crash_between_start_and_ack()
    fx = core.tick(h.now + 2.0 + 120.0)
    gone = [e for e in fx if isinstance(e, Persist) and e.key.startswith("start:")]
    assert gone and gone[0].value is None
    assert core.snapshot(h.now)["sessions"] == []
