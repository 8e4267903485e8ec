"""Every vehicle request and every reply code of the contract, on the pure core."""

from __future__ import annotations

import pytest

from common.geo import haversine_km
from common.messages import Hold, Release, Start, Stop
from tests.support.core_harness import Harness


@pytest.fixture
def h() -> Harness:
    h = Harness(queue_capacity=2)
    h.point("CP01")
    return h


# --- ping / ids ------------------------------------------------------------------------


def test_ping_gets_empty_pong_and_echoes_the_request_id(h: Harness) -> None:
    r = h.reply(h.request("CAR1", "ping", conn=9, rid="abc"))
    assert (r.conn, r.request_id, r.type, r.data) == (9, "abc", "pong", {})


def test_request_type_not_matching_its_data_is_invalid(h: Harness) -> None:
    from common.messages import Ping, VehicleRequest

    fx = h.core.handle_request(1, "CAR1", VehicleRequest("reserva", Ping()), h.now)
    r = h.reply(fx)
    assert r.type == "erro" and r.data["code"] == "invalid"


def test_unknown_request_type_is_unknown_type(h: Harness) -> None:
    from common.messages import Ping, VehicleRequest

    r = h.reply(h.core.handle_request(1, "CAR1", VehicleRequest("fly", Ping()), h.now))
    assert r.type == "erro" and r.data["code"] == "unknown_type"


# --- reserva ---------------------------------------------------------------------------


def test_reserve_confirmed_with_original_message_turn_and_hold(h: Harness) -> None:
    fx = h.request("CAR1", "reserva", rid=3, id_ponto_recarga="CP01", tempo_estimado=10)
    r = h.reply(fx)
    assert r.type == "reserva_response" and r.request_id == 3
    assert r.data["status"] == "success" and r.data["code"] == "reserved"
    assert r.data["message"] == "Reserve confirmed"
    assert r.data["posicao"] == 1 and r.data["reservation_id"].startswith("res-")
    assert r.data["expira_em"].endswith("Z")
    # reply before the sua_vez push it caused
    kinds = [getattr(e, "type", None) for e in fx]
    assert kinds.index("reserva_response") < kinds.index("sua_vez")
    (hold,) = h.commands(fx, Hold)
    assert hold.until == h.now + 600 + 600 and hold.cmd_id.startswith("cmd-")
    assert h.topics(fx)[:2] == ["reservation.created", "reservation.turn"]
    assert h.published(fx, "point.status")[0]["estado"] == "reservado"


def test_reserve_codes_in_order(h: Harness) -> None:
    assert h.reserve("CAR1", "NOPE")["code"] == "unknown_point"
    assert h.reserve("CAR1")["code"] == "reserved"
    again = h.reserve("CAR1")
    assert (again["code"], again["message"], again["status"]) == (
        "already_queued",
        "Vehicle already in queue",
        "error",
    )
    h.point("CP02", lat=-12.3)
    assert h.reserve("CAR1", "CP02")["code"] == "already_reserved"
    assert h.reserve("CAR2")["code"] == "reserved"
    full = h.reserve("CAR3")
    assert (full["code"], full["message"]) == ("queue_full", "Queue full")
    assert h.core.stats()["queues"] == {"CP01": 2}


def test_reserve_refused_when_offline_or_faulted(h: Harness) -> None:
    h.point("CP02", lat=-12.3, estado="indisponivel")
    assert h.reserve("CAR1", "CP02")["code"] == "point_unavailable"
    h.tick(7.0)
    assert h.reserve("CAR1", "CP01")["code"] == "point_offline"


def test_second_in_queue_gets_position_and_no_deadline(h: Harness) -> None:
    h.reserve("CAR1")
    r = h.reserve("CAR2")
    assert r["posicao"] == 2 and "expira_em" not in r


def test_reserving_a_charging_point_waits_for_the_turn(h: Harness) -> None:
    sid = h.start_charging("CAR9")
    fx = h.request("CAR1", "reserva", id_ponto_recarga="CP01")
    assert h.reply(fx).data["code"] == "reserved"
    assert not h.pushes(fx, "sua_vez")
    fx = h.complete("CP01", sid, "CAR9")
    assert h.pushes(fx, "sua_vez")[0].vehicle_id == "CAR1"


# --- cancelar --------------------------------------------------------------------------


def test_cancel_passes_the_turn_and_releases(h: Harness) -> None:
    h.reserve("CAR1")
    h.reserve("CAR2")
    fx = h.request("CAR1", "cancelar", id_ponto_recarga="CP01")
    r = h.reply(fx)
    assert r.type == "cancelar_response" and r.data["code"] == "cancelled"
    assert h.commands(fx, Release) and h.commands(fx, Hold)[0].vehicle_id == "CAR2"
    assert h.pushes(fx, "sua_vez")[0].vehicle_id == "CAR2"
    assert h.published(fx, "reservation.cancelled")[0]["motivo"] == "vehicle"
    again = h.reply(h.request("CAR1", "cancelar", id_ponto_recarga="CP01"))
    assert again.data["code"] == "no_reservation" and again.data["status"] == "error"


def test_cancel_of_waiting_reservation_sends_no_release(h: Harness) -> None:
    h.reserve("CAR1")
    h.reserve("CAR2")
    fx = h.request("CAR2", "cancelar", id_ponto_recarga="CP01")
    assert h.reply(fx).data["code"] == "cancelled"
    assert not h.commands(fx)


# --- turn deadline ---------------------------------------------------------------------


def test_deadline_is_eta_or_turn_start_plus_hold() -> None:
    h = Harness(hold_s=60.0)
    h.point("CP01")
    t0 = h.now
    h.reserve("CAR1", eta=10)  # turn now, eta 10 min -> deadline t0 + 600 + 60
    h.reserve("CAR2", eta=0)
    assert h.core.next_due() is not None
    fx = h.tick(659.0)
    assert not h.pushes(fx, "reserva_expirada")
    h.dgram("CP01", estado="disponivel")
    fx = h.tick(1.0)
    assert h.now == t0 + 660
    (exp,) = h.pushes(fx, "reserva_expirada")
    assert exp.vehicle_id == "CAR1"
    assert h.published(fx, "reservation.expired")[0]["vehicle_id"] == "CAR1"
    assert h.commands(fx, Release)
    (turn,) = h.pushes(fx, "sua_vez")
    assert turn.vehicle_id == "CAR2"
    # CAR2: created at t0 with eta 0, turn at t0 + 660 -> deadline t0 + 720
    assert h.commands(fx, Hold)[0].until == t0 + 720


# --- chegada ---------------------------------------------------------------------------


def test_arrival_with_turn_sends_start_and_replies_on_ack(h: Harness) -> None:
    h.reserve("CAR1")
    fx = h.arrive("CAR1", capacidade_kwh=40.0)
    assert not h.replies(fx)
    (start,) = h.commands(fx, Start)
    assert start.vehicle_id == "CAR1" and start.capacidade_kwh == 40.0
    assert start.session_id.startswith("ses-")
    fx = h.ack("CP01", start.cmd_id)
    r = h.reply(fx)
    assert r.type == "chegada_response"
    assert (r.data["code"], r.data["session_id"]) == ("started", start.session_id)
    assert h.published(fx, "charging.started")[0]["point_id"] == "CP01"
    assert h.core.stats()["reservations"] == 0 and h.core.stats()["sessions_active"] == 1


def test_walk_in_on_empty_free_point(h: Harness) -> None:
    sid = h.start_charging("CAR1")
    assert h.core.snapshot(h.now)["sessions"][0]["session_id"] == sid


def test_arrival_refusals(h: Harness) -> None:
    h.reserve("CAR1")
    h.reserve("CAR2")
    r = h.reply(h.arrive("CAR2"))
    assert r.data["code"] == "not_your_turn" and "2" in r.data["message"]
    assert h.reply(h.arrive("CAR3")).data["code"] == "no_reservation"
    assert h.reply(h.arrive("CAR1", battery=80, target=80)).data["code"] == "invalid"
    assert h.reply(h.arrive("CAR1", "NOPE")).data["code"] == "unknown_point"


def test_reserva_and_chegada_refuse_an_unusable_point_with_the_same_code() -> None:
    h = Harness()
    h.point("CP01")
    h.tick(7.0)  # CP01 falls silent: offline
    h.point("CP02", lat=-12.3, estado="indisponivel")  # online but faulted
    for pid, code in (("NOPE", "unknown_point"), ("CP01", "point_offline"),
                      ("CP02", "point_unavailable")):  # fmt: skip
        reserva = h.reserve("CAR1", pid)
        chegada = h.reply(h.arrive("CAR1", pid)).data
        assert (reserva["code"], chegada["code"]) == (code, code), pid
        assert reserva["status"] == chegada["status"] == "error"


def test_arrival_point_busy_and_offline() -> None:
    h = Harness()
    h.point("CP01")
    h.start_charging("CAR1")
    assert h.reply(h.arrive("CAR2")).data["code"] == "point_busy"
    assert h.reply(h.arrive("CAR1")).data["code"] == "point_busy"
    h.tick(7.0)
    assert h.reply(h.arrive("CAR2")).data["code"] == "point_offline"


def test_arrival_while_start_pending_is_busy(h: Harness) -> None:
    h.arrive("CAR1")
    assert h.reply(h.arrive("CAR2")).data["code"] == "point_busy"


@pytest.mark.parametrize("how", ["nack", "timeout", "unreachable"])
def test_point_unreachable_keeps_the_reservation(h: Harness, how: str) -> None:
    h.reserve("CAR1")
    fx = h.arrive("CAR1", rid=42)
    (start,) = h.commands(fx, Start)
    if how == "nack":
        fx = h.ack("CP01", start.cmd_id, ok=False, error="cable")
    elif how == "timeout":
        h.heartbeat("CP01")
        assert h.core.next_due() == pytest.approx(h.now + 5.0)
        assert not h.replies(h.tick(4.9))
        fx = h.tick(0.1)
    else:
        fx = h.apply(h.core.station_unreachable("CP01", h.now))
    r = h.reply(fx)
    assert (r.request_id, r.data["code"]) == (42, "point_unreachable")
    status = h.reply(h.request("CAR1", "status")).data
    assert status["reserva"]["posicao"] == 1 and status["reserva"]["turno"] is True
    assert status["sessao"] is None
    # a second attempt works
    assert h.start_charging("CAR1")


def test_late_ok_ack_after_timeout_makes_the_station_stop(h: Harness) -> None:
    (start,) = h.commands(h.arrive("CAR1"), Start)
    h.tick(5.0)
    fx = h.ack("CP01", start.cmd_id)
    assert not h.replies(fx)
    assert h.commands(fx, Stop)[0].session_id == start.session_id


# --- parar -----------------------------------------------------------------------------


def test_stop_sends_stop_and_replies_stopping(h: Harness) -> None:
    assert h.reply(h.request("CAR1", "parar", id_ponto_recarga="CP01")).data["code"] == (
        "no_session"
    )
    sid = h.start_charging("CAR1")
    fx = h.request("CAR1", "parar", id_ponto_recarga="CP01")
    r = h.reply(fx)
    assert r.type == "parar_response" and r.data["code"] == "stopping"
    assert h.commands(fx, Stop)[0].session_id == sid


# --- custos / status -------------------------------------------------------------------


def test_costs_statement_after_a_session(h: Harness) -> None:
    empty = h.reply(h.request("CAR1", "custos")).data
    assert empty == {"vehicle_id": "CAR1", "moeda": "BRL", "total": 0.0, "sessoes": []}
    sid = h.start_charging("CAR1", metodo_pagamento="Cartão de crédito")
    h.complete("CP01", sid, "CAR1", 20, 80)
    r = h.reply(h.request("CAR1", "custos"))
    assert r.type == "extrato"
    assert r.data["total"] == 72.0
    (line,) = r.data["sessoes"]
    assert line["session_id"] == sid and line["energia_kwh"] == 36.0
    assert line["payment_method"] == "Cartão de crédito" and line["cost"] == 72.0


def test_status_shows_reservation_and_session(h: Harness) -> None:
    r = h.reply(h.request("CAR1", "status"))
    assert r.type == "status_veiculo" and r.data == {"reserva": None, "sessao": None}
    h.reserve("CAR1")
    st = h.reply(h.request("CAR1", "status")).data
    assert st["reserva"]["id_ponto_recarga"] == "CP01" and st["reserva"]["expira_em"]
    h.arrive("CAR1")
    assert h.reply(h.request("CAR1", "status")).data["sessao"]["estado"] == "iniciando"


# --- bateria / consulta ----------------------------------------------------------------


def test_low_battery_event_and_nearest_usable_points() -> None:
    h = Harness()
    h.point("A", lat=-12.0, lon=-38.0)
    h.point("B", lat=-12.1, lon=-38.0)
    h.point("C", lat=-12.05, lon=-38.0, estado="indisponivel")
    loc = {"latitude": -12.0, "longitude": -38.0}
    fx = h.request("CAR1", "bateria", nivel_bateria=15, localizacao=loc)
    r = h.reply(fx)
    assert r.type == "pontos_disponiveis"
    assert [p["id"] for p in r.data["pontos"]] == ["A", "B"]
    b = r.data["pontos"][1]
    assert b["distance"] == round(haversine_km(-12.0, -38.0, -12.1, -38.0), 3)
    assert b["estado"] == "disponivel" and b["available"] is True
    assert b["espera_estimada_min"] == 0 and b["queue_capacity"] == 5
    assert h.published(fx, "vehicle.low_battery")[0]["nivel_bateria"] == 15
    fx = h.request("CAR1", "bateria", nivel_bateria=20, localizacao=loc, distancia_max=5.0)
    assert not h.published(fx, "vehicle.low_battery")
    assert [p["id"] for p in h.reply(fx).data["pontos"]] == ["A"]


def test_list_points_is_a_list_nearest_first_with_radius_and_limit() -> None:
    h = Harness()
    for i in range(5):
        h.point(f"P{i}", lat=-12.0 - i * 0.01, lon=-38.0)
    loc = {"latitude": -12.0, "longitude": -38.0}
    r = h.reply(h.request("CAR1", "consulta", localizacao=loc))
    assert r.type == "lista_pontos" and [p["id"] for p in r.data] == [f"P{i}" for i in range(5)]
    r = h.reply(h.request("CAR1", "consulta", localizacao=loc, distancia_max=2.5, limite=2))
    assert [p["id"] for p in r.data] == ["P0", "P1"]
    r = h.reply(h.request("CAR1", "consulta", localizacao=loc, distancia_max=0))
    assert len(r.data) == 5


def test_wait_estimate_grows_with_the_queue(h: Harness) -> None:
    loc = {"latitude": -12.26, "longitude": -38.96}
    first = h.reply(h.request("CAR9", "consulta", localizacao=loc)).data[0]
    h.reserve("CAR1", eta=30)
    second = h.reply(h.request("CAR9", "consulta", localizacao=loc)).data[0]
    assert first["espera_estimada_min"] == 0
    assert second["espera_estimada_min"] >= 30 and second["estado"] == "reservado"


def test_one_pending_start_per_vehicle_across_points() -> None:
    h = Harness()
    h.point("CP01")
    h.point("CP02", lat=-12.3)
    assert h.commands(h.arrive("CAR1", "CP01"), Start)
    r = h.reply(h.arrive("CAR1", "CP02"))
    assert r.data["code"] == "point_busy"


def test_low_battery_is_published_once_until_the_vehicle_reports_25_or_more() -> None:
    h = Harness()
    h.point("A")
    loc = {"latitude": -12.0, "longitude": -38.0}

    def events(vid: str, level: float) -> int:
        fx = h.request(vid, "bateria", nivel_bateria=level, localizacao=loc)
        assert h.reply(fx).type == "pontos_disponiveis"
        return len(h.published(fx, "vehicle.low_battery"))

    assert events("CAR1", 15) == 1
    assert [events("CAR1", lv) for lv in (15, 10, 19.9, 20, 24.9, 3)] == [0] * 6
    assert events("CAR2", 19) == 1  # per vehicle
    assert events("CAR1", 25) == 0  # 25 or more re-arms the event ...
    assert events("CAR1", 18) == 1  # ... which the next low report publishes again
    assert events("CAR1", 18) == 0


def test_a_query_changes_nothing_durable() -> None:
    h = Harness()
    h.point("A")
    loc = {"latitude": -12.0, "longitude": -38.0}
    h.request("CAR1", "bateria", nivel_bateria=15, localizacao=loc)
    for fx in (
        h.request("CAR1", "bateria", nivel_bateria=15, localizacao=loc),
        h.request("CAR1", "consulta", localizacao=loc),
        h.request("CAR1", "status"),
        h.request("CAR1", "custos"),
        h.request("CAR1", "ping"),
        h.request("CAR1", "reserva", id_ponto_recarga="nope"),
    ):
        assert [type(e).__name__ for e in fx] == ["Reply"], fx
