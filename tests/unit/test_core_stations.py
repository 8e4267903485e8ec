"""Station datagrams and ZeroMQ messages: registration, liveness, faults, sessions."""

from __future__ import annotations

from decimal import Decimal

from broker.core.effects import Rejected
from common.messages import Heartbeat, Hold, SessionAck, Start, StatusDatagram, Welcome
from tests.support.core_harness import Harness


def test_first_datagram_registers_the_point() -> None:
    h = Harness()
    fx = h.dgram("CP01", potencia_kw=22.0, preco_kwh=1.5)
    assert h.topics(fx) == ["point.registered", "point.online", "point.status"]
    reg = h.published(fx, "point.registered")[0]
    assert (reg["point_id"], reg["potencia_kw"], reg["preco_kwh"]) == ("CP01", 22.0, 1.5)
    assert h.store[("point", "CP01")]["preco_kwh"] == 1.5
    assert h.core.stats()["points_online"] == 1


def test_original_minimal_datagram_is_accepted() -> None:
    h = Harness()
    d = StatusDatagram(id="CP01", latitude=-12.26, longitude=-38.96, queue_size=0)
    fx = h.apply(h.core.handle_datagram(d, h.now))
    assert "point.registered" in h.topics(fx)
    snap = h.core.snapshot(h.now)["points"][0]
    assert snap["estado"] == "disponivel" and snap["potencia_kw"] == 50.0


def test_unchanged_datagram_has_no_effects_and_stale_ones_are_counted() -> None:
    h = Harness()
    h.point("CP01")
    assert h.point("CP01") == []
    stale = h.dgram("CP01", seq=1, estado="indisponivel")  # not applied, refused
    assert [(e.edge, e.reason) for e in stale if isinstance(e, Rejected)] == [("status", "stale")]
    assert len(stale) == 1
    assert h.core.stats()["datagrams_stale"] == 1
    # a new boot resets the filter
    fx = h.dgram("CP01", seq=1, boot_id="other", estado="indisponivel")
    assert h.published(fx, "point.status")[0]["estado"] == "indisponivel"


def test_static_facts_follow_the_latest_report() -> None:
    h = Harness()
    h.point("CP01", preco_kwh=2.0)
    fx = h.point("CP01", preco_kwh=3.0, lat=-12.5)
    assert h.store[("point", "CP01")]["preco_kwh"] == 3.0
    assert h.store[("point", "CP01")]["latitude"] == -12.5
    assert not h.topics(fx)  # estado unchanged -> no point.status


def test_offline_window_is_max_of_option_and_three_intervals() -> None:
    h = Harness(offline_after_s=6.0)
    h.point("A", interval_s=1.0)
    h.point("B", lat=-12.3, interval_s=4.0)  # window 12 s
    fx = h.tick(6.0)
    assert [d["point_id"] for d in h.published(fx, "point.offline")] == ["A"]
    assert h.published(fx, "point.status")[0]["estado"] == "offline"
    fx = h.tick(6.0)
    assert [d["point_id"] for d in h.published(fx, "point.offline")] == ["B"]
    assert h.core.stats()["points_online"] == 0
    fx = h.point("A", interval_s=1.0)
    assert h.topics(fx) == ["point.online", "point.status"]


def test_zeromq_traffic_keeps_a_point_online() -> None:
    h = Harness()
    h.point("CP01")
    for _ in range(5):
        h.at(3.0)
        fx = h.heartbeat("CP01")
        assert h.commands(fx, Heartbeat) == [Heartbeat()]
        assert not h.published(h.tick(), "point.offline")
    assert h.published(h.tick(6.0), "point.offline")


def test_point_status_only_on_state_changes() -> None:
    h = Harness()
    h.point("CP01")
    for _ in range(10):
        assert h.dgram("CP01", estado="disponivel", energia_kwh=0.0) == []
    fx = h.dgram("CP01", estado="indisponivel")
    assert [d["estado"] for d in h.published(fx, "point.status")] == ["indisponivel"]


def test_original_form_unavailable_without_vehicle_is_a_fault() -> None:
    h = Harness()
    h.dgram("CP01", available=False, boot_id=None, seq=None)
    assert h.core.snapshot(h.now)["points"][0]["estado"] == "indisponivel"
    h.dgram("CP01", available=False, vehicle_id="CAR7", boot_id=None, seq=None)
    assert h.core.snapshot(h.now)["points"][0]["estado"] == "carregando"


def test_hello_registers_welcomes_and_repeats_the_hold() -> None:
    h = Harness()
    fx = h.hello("CP01", potencia_kw=11.0, preco_kwh=1.25, interval_s=1.0)
    assert h.commands(fx, Welcome) == [Welcome(heartbeat_s=1.0)]
    assert "point.registered" in h.topics(fx) and "point.online" in h.topics(fx)
    h.reserve("CAR1")
    fx = h.hello("CP01", potencia_kw=11.0, preco_kwh=1.25, interval_s=1.0)
    assert h.commands(fx, Hold)[0].vehicle_id == "CAR1"


def test_session_complete_bills_once_and_is_always_acked() -> None:
    h = Harness()
    h.point("CP01", preco_kwh=1.99)
    sid = h.start_charging("CAR1", capacidade_kwh=50.0)
    fx = h.complete("CP01", sid, "CAR1", 20.0, 63.5)
    # 43.5 % of 50 kWh = 21.75 kWh * 1.99 = 43.2825 -> 43.28
    done = h.published(fx, "charging.completed")[0]
    assert done["energy_kwh"] == 21.75 and done["cost"] == 43.28
    assert done["currency"] == "BRL" and done["price_kwh"] == 1.99
    assert done["reason"] == "target_reached" and done["payment_method"] == "Pix"
    assert set(done) == {
        "session_id",
        "vehicle_id",
        "point_id",
        "started_at",
        "ended_at",
        "energy_kwh",
        "price_kwh",
        "cost",
        "currency",
        "payment_method",
        "reason",
    }
    (cf,) = h.pushes(fx, "custo_final")
    assert cf.data["cost"] == 43.28 and cf.data["moeda"] == "BRL"
    (enc,) = h.pushes(fx, "encerramento")
    assert enc.data["energia_consumida"] == 43.5 and enc.data["energia_kwh"] == 21.75
    assert h.commands(fx, SessionAck) == [SessionAck(session_id=sid)]
    again = h.complete("CP01", sid, "CAR1", 20.0, 63.5)
    assert h.commands(again, SessionAck) and not h.topics(again) and not h.pushes(again)
    assert h.core.accounts()["CAR1"]["total"] == 43.28
    assert h.core.stats()["session_duplicates"] == 1


def test_price_is_the_one_at_session_start() -> None:
    h = Harness()
    h.point("CP01", preco_kwh=2.0)
    sid = h.start_charging("CAR1")
    h.point("CP01", preco_kwh=9.0, estado="carregando")
    fx = h.complete("CP01", sid, "CAR1", 20.0, 80.0)
    assert h.published(fx, "charging.completed")[0]["cost"] == 72.0


def test_unknown_session_complete_is_acked_not_billed() -> None:
    h = Harness()
    h.point("CP01")
    fx = h.complete("CP01", "ses-x", "CAR1")
    assert h.commands(fx, SessionAck) and not h.pushes(fx)
    assert h.core.stats()["sessions_unknown"] == 1 and h.core.accounts() == {}


def test_complete_before_ack_still_starts_and_bills() -> None:
    h = Harness()
    h.point("CP01")
    (start,) = h.commands(h.arrive("CAR1", rid=1), Start)
    fx = h.complete("CP01", start.session_id, "CAR1")
    assert h.reply(fx).data["code"] == "started"
    assert h.pushes(fx, "custo_final")


def test_station_lost_mid_session_is_billed_as_fault_after_grace() -> None:
    h = Harness(offline_grace_s=120.0)
    h.point("CP01", preco_kwh=2.0)
    sid = h.start_charging("CAR1")
    h.dgram("CP01", estado="carregando", session_id=sid, energia_kwh=12.5)
    h.reserve("CAR2")
    fx = h.tick(6.0)
    assert h.published(fx, "point.offline")
    assert not h.pushes(h.tick(119.0))
    fx = h.tick(1.0)
    (cancel,) = h.pushes(fx, "reserva_cancelada")
    assert cancel.vehicle_id == "CAR2" and cancel.data["motivo"] == "point_offline"
    done = h.published(fx, "charging.completed")[0]
    assert (done["reason"], done["energy_kwh"], done["cost"]) == ("fault", 12.5, 25.0)
    # the station comes back and reports it: acked, not billed twice
    h.point("CP01")
    again = h.complete("CP01", sid, "CAR1", 20, 40)
    assert not h.pushes(again) and h.core.accounts()["CAR1"]["total"] == 25.0


def test_station_back_within_grace_keeps_queue_and_session() -> None:
    h = Harness()
    h.point("CP01")
    h.reserve("CAR1")
    h.reserve("CAR2")
    assert h.published(h.tick(10.0), "point.offline")
    h.point("CP01")
    for _ in range(50):  # 150 s, beyond the grace period counted from the outage
        h.at(3.0)
        h.point("CP01")
        assert not h.pushes(h.tick(), "reserva_cancelada")
    assert h.core.stats()["queues"] == {"CP01": 2}
    assert not any(e.topic == "reservation.cancelled" for e in h.events)


def test_fault_grace_cancels_with_point_unavailable() -> None:
    h = Harness(offline_grace_s=30.0)
    h.point("CP01")
    h.reserve("CAR1")
    h.at(1.0)
    h.dgram("CP01", estado="indisponivel")
    for _ in range(10):  # keep it online but faulted
        h.at(3.0)
        h.dgram("CP01", estado="indisponivel")
    fx = h.tick(1.0)
    (c,) = h.pushes(fx, "reserva_cancelada")
    assert c.data["motivo"] == "point_unavailable"


def test_new_boot_during_session_closes_it_as_fault() -> None:
    h = Harness()
    h.point("CP01")
    sid = h.start_charging("CAR1")
    h.dgram("CP01", estado="carregando", session_id=sid, energia_kwh=3.0)
    fx = h.hello("CP01", boot="new-process")
    done = h.published(fx, "charging.completed")[0]
    assert (done["session_id"], done["reason"], done["energy_kwh"]) == (sid, "fault", 3.0)


def test_station_unreachable_without_pending_start_does_nothing() -> None:
    h = Harness()
    h.point("CP01")
    assert h.core.station_unreachable("CP01", h.now) == []
    assert h.core.station_unreachable("NOPE", h.now) == []


def test_unknown_ack_is_counted() -> None:
    h = Harness()
    h.point("CP01")
    h.ack("CP01", "cmd-unknown")
    assert h.core.stats()["acks_unknown"] == 1


def test_costs_are_decimal_in_the_store() -> None:
    h = Harness()
    h.point("CP01", preco_kwh=0.1)
    sid = h.start_charging("CAR1", capacidade_kwh=1.0)
    h.complete("CP01", sid, "CAR1", 20.0, 70.0, energy=0.5)  # 0.5 kWh * 0.1 = 0.05
    rec = h.store[("session", sid)]
    assert Decimal(rec["cost"]) == Decimal("0.05") and rec["state"] == "billed"


def test_offline_checks_of_many_points_share_wakeups() -> None:
    h = Harness()
    for i in range(50):
        h.at(0.01)
        h.point(f"P{i:02d}", lat=-12.0 - i * 0.001)
    wakeups = 0
    while h.core.stats()["points_online"] and (due := h.core.next_due()) is not None:
        h.now = due
        h.tick()
        wakeups += 1
    assert h.core.stats()["points_online"] == 0
    assert wakeups <= 3


def test_hostile_station_numbers_never_break_billing() -> None:
    h = Harness()
    h.hello("CP01", potencia_kw=float("nan"), preco_kwh=float("inf"), interval_s=-1.0)
    snap = h.core.snapshot(h.now)["points"][0]
    assert (snap["potencia_kw"], snap["preco_kwh"]) == (50.0, 2.0)
    sid = h.start_charging("CAR1")
    for start in (float("nan"), -50.0, 0.0):  # not the session's initial level: refused
        fx = h.complete("CP01", sid, "CAR1", start=start, end=float("inf"), energy=1.0)
        assert not h.published(fx, "charging.completed")
    assert h.core.stats()["sessions_out_of_bounds"] == 3
    fx = h.complete("CP01", sid, "CAR1", start=20.0, end=150.0)  # clamped to 100
    assert h.published(fx, "charging.completed")[0]["energy_kwh"] == 48.0  # the battery's room
    assert h.core.accounts()["CAR1"]["total"] == 96.0
