"""A station that refuses to hold a turn: the driver is refused, nothing stays held."""

from __future__ import annotations

import pytest

from broker.core.effects import Effect
from common.messages import Hold
from tests.support.core_harness import Harness


def commanded() -> Harness:
    """CP01 registered by datagram and greeted by a hello that says its hold acks
    confirm reservations (the OCPP gateway)."""
    h = Harness()
    h.point("CP01")
    h.hello("CP01", confirms_holds=True)
    return h


def reserva(h: Harness, vid: str) -> tuple[list[Effect], Hold]:
    fx = h.request(vid, "reserva", id_ponto_recarga="CP01")
    (hold,) = h.commands(fx, Hold)
    return fx, hold


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("point_busy: the charger is occupied", "point_busy"),
        ("point_unavailable: ReserveNow answered Rejected", "point_unavailable"),
        ("something else", "point_unavailable"),
    ],
)
def test_a_refused_hold_refuses_the_reserva_and_holds_nothing(error: str, code: str) -> None:
    h = commanded()
    fx, hold = reserva(h, "CAR1")
    assert not h.replies(fx) and not h.pushes(fx, "sua_vez")  # both wait for the ack
    fx = h.ack("CP01", hold.cmd_id, ok=False, error=error)
    assert h.reply(fx).type == "reserva_response" and h.reply(fx).data["code"] == code
    assert not h.pushes(fx)
    assert h.published(fx, "reservation.cancelled")[0]["motivo"] == code
    assert h.core.snapshot(h.now)["queues"] == {}
    assert h.core.stats()["holds_refused"] == 1
    assert h.reserve("CAR2")["code"] == "reserved"  # the point is free for the next driver


def test_an_acked_hold_confirms_then_tells_the_turn() -> None:
    h = commanded()
    _, hold = reserva(h, "CAR1")
    fx = h.ack("CP01", hold.cmd_id)
    assert h.reply(fx).data["code"] == "reserved"
    assert [p.type for p in h.pushes(fx)] == ["sua_vez"]


def test_a_silent_station_is_taken_as_holding_after_the_ack_timeout() -> None:
    h = commanded()
    reserva(h, "CAR1")
    assert not h.replies(h.tick(h.config.ack_timeout_s - 0.1))
    fx = h.tick(0.2)
    assert h.reply(fx).data["code"] == "reserved" and h.pushes(fx, "sua_vez")


def test_an_unroutable_station_is_taken_as_holding_at_once() -> None:
    h = commanded()
    reserva(h, "CAR1")
    fx = h.apply(h.core.station_unreachable("CP01", h.now))
    assert h.reply(fx).data["code"] == "reserved"


def test_other_stations_are_answered_at_once_and_their_refusal_cancels_by_push() -> None:
    h = Harness()
    h.point("CP01")
    fx = h.request("CAR1", "reserva", id_ponto_recarga="CP01")  # a datagram-only point
    assert h.reply(fx).data["code"] == "reserved" and h.commands(fx, Hold)
    h.point("CP02")
    h.hello("CP02")  # answers commands, does not confirm holds
    fx = h.request("CAR2", "reserva", id_ponto_recarga="CP02")
    assert h.reply(fx).data["code"] == "reserved" and h.pushes(fx, "sua_vez")
    fx = h.ack("CP02", h.commands(fx, Hold)[0].cmd_id, ok=False, error="point_unavailable: x")
    (push,) = h.pushes(fx, "reserva_cancelada")
    assert push.vehicle_id == "CAR2" and push.data["motivo"] == "point_unavailable"


def test_a_turn_passed_later_and_refused_is_cancelled_by_push_and_passes_on() -> None:
    h = commanded()
    assert h.reserve("CAR1")["code"] == "reserved"
    assert h.reserve("CAR2")["code"] == "reserved"  # second in the queue: no hold yet
    fx = h.request("CAR1", "cancelar", id_ponto_recarga="CP01")
    (hold,) = h.commands(fx, Hold)
    assert hold.vehicle_id == "CAR2"
    fx = h.ack("CP01", hold.cmd_id, ok=False, error="point_busy: occupied")
    (push,) = h.pushes(fx, "reserva_cancelada")
    assert push.vehicle_id == "CAR2" and push.data["motivo"] == "point_busy"
    assert h.core.snapshot(h.now)["queues"] == {}


def test_a_hold_acked_by_another_point_is_rejected_and_changes_nothing() -> None:
    h = commanded()
    h.point("CP02")
    h.hello("CP02", confirms_holds=True)
    fx, hold = reserva(h, "CAR1")
    fx = h.ack("CP02", hold.cmd_id, ok=False, error="point_busy")
    assert not h.replies(fx)
    assert h.core.snapshot(h.now)["queues"]["CP01"]
