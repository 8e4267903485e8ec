"""Out of service (rules.md): an operator's decision, persisted, published, kept from stations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.core.effects import Effect
from common.errors import InvalidRequest, UnknownPoint
from common.messages import Release
from tests.unit.test_core_harness import Harness


def disable(h: Harness, pid: str = "CP01", reason: str = "cable damaged") -> list[Effect]:
    seq, fx = h.core.set_availability(pid, False, reason, "ops-team", h.now)
    assert seq == h.core.last_seq
    return h.apply(fx)


def enable(h: Harness, pid: str = "CP01") -> list[Effect]:
    seq, fx = h.core.set_availability(pid, True, "", "ops-team", h.now)
    assert seq == h.core.last_seq
    return h.apply(fx)


def view(h: Harness, pid: str = "CP01") -> dict[str, Any]:
    return next(p for p in h.core.snapshot(h.now)["points"] if p["id"] == pid)


def test_out_of_service_cancels_the_queue_and_refuses_reserva_and_chegada() -> None:
    h = Harness()
    h.point("CP01")
    assert h.reserve("CAR1")["code"] == "reserved"  # holds the turn
    assert h.reserve("CAR2")["code"] == "reserved"
    fx = disable(h)
    assert h.published(fx, "point.availability") == [
        {"point_id": "CP01", "available": False, "reason": "cable damaged", "by": "ops-team"}
    ]
    cancelled = h.published(fx, "reservation.cancelled")
    assert [(c["vehicle_id"], c["motivo"]) for c in cancelled] == [
        ("CAR1", "point_disabled"),
        ("CAR2", "point_disabled"),
    ]
    pushed = h.pushes(fx, "reserva_cancelada")
    assert {p.vehicle_id for p in pushed} == {"CAR1", "CAR2"}
    assert all(p.data["motivo"] == "point_disabled" for p in pushed)
    assert h.commands(fx, Release)  # the station held CAR1's turn
    assert h.published(fx, "point.status")[-1]["estado"] == "indisponivel"
    p = view(h)
    assert (p["estado"], p["fora_de_servico"], p["reason"]) == (
        "indisponivel", True, "cable damaged"
    )  # fmt: skip
    refused = h.reserve("CAR3")
    assert (refused["status"], refused["code"]) == ("error", "point_unavailable")
    assert "cable damaged" in refused["message"]
    arrival = h.reply(h.arrive("CAR3")).data
    assert arrival["code"] == "point_unavailable"
    # bateria does not offer it; consulta lists it as indisponivel
    here = {"latitude": -12.26, "longitude": -38.96}
    near = h.reply(h.request("CAR3", "bateria", nivel_bateria=50, localizacao=here)).data
    assert near["pontos"] == [] or all(x["id"] != "CP01" for x in near["pontos"])


def test_a_running_session_goes_on_and_is_billed() -> None:
    h = Harness()
    h.point("CP01")
    sid = h.start_charging("CAR1")
    disable(h)
    assert view(h)["session_id"] == sid
    fx = h.complete("CP01", sid, "CAR1", 20, 60, energy=24.0)
    [done] = h.published(fx, "charging.completed")
    assert done["session_id"] == sid and done["energy_kwh"] == 24.0
    assert [s["session_id"] for s in h.core.accounts()["CAR1"]["sessoes"]] == [sid]
    assert view(h)["estado"] == "indisponivel"  # still out of service after the session


def test_station_reports_cannot_undo_it_and_putting_back_restores_service() -> None:
    h = Harness()
    h.point("CP01")
    disable(h)
    for _ in range(3):
        h.dgram("CP01", estado="disponivel", available=True)
        h.hello("CP01", boot="new-process")
        h.tick(1.0)
    assert view(h)["fora_de_servico"] is True and view(h)["estado"] == "indisponivel"
    fx = enable(h)
    assert h.published(fx, "point.availability")[0]["available"] is True
    assert h.published(fx, "point.status")[-1]["estado"] == "disponivel"
    assert "fora_de_servico" not in view(h)
    assert h.reserve("CAR1")["code"] == "reserved"


def test_it_survives_a_restart_and_repeats_change_nothing() -> None:
    h = Harness()
    h.point("CP01")
    h.point("CP02", lat=-12.3)
    disable(h, "CP02", "inspection")
    again, fx = h.core.set_availability("CP02", False, "inspection", "ops-team", h.now)
    assert again == h.core.last_seq and h.apply(fx) == []
    core = h.restored(5.0)
    p = next(p for p in core.snapshot(h.now + 5)["points"] if p["id"] == "CP02")
    assert (p["estado"], p["fora_de_servico"], p["reason"]) == ("indisponivel", True, "inspection")
    # a new reason is a change: published again
    fx = disable(h, "CP02", "new cable ordered")
    assert h.published(fx, "point.availability")[0]["reason"] == "new cable ordered"


def test_bad_requests_get_an_error_and_change_nothing() -> None:
    h = Harness()
    h.point("CP01")
    seq = h.core.last_seq
    with pytest.raises(UnknownPoint, match="unknown point 'NOPE'"):
        h.core.set_availability("NOPE", False, "x", "o", h.now)
    for reason in ("  ", "x" * 201):
        with pytest.raises(InvalidRequest, match=r"^reason: ") as err:
            h.core.set_availability("CP01", False, reason, "o", h.now)
        assert err.value.field == "reason"
    assert h.core.last_seq == seq and "fora_de_servico" not in view(h)


def test_query_replies_show_it_and_follow_a_new_reason() -> None:
    h = Harness()
    h.point("CP01")
    here = {"latitude": -12.26, "longitude": -38.96}

    def listed() -> dict[str, Any]:
        reply = h.reply(h.request("CAR1", "consulta", localizacao=here))
        data = reply.data if isinstance(reply.data, list) else json.loads(bytes(reply.data))
        return dict(data[0])

    assert "fora_de_servico" not in listed()  # and its view is now cached
    disable(h, reason="first")
    p = listed()
    assert (p["estado"], p["fora_de_servico"], p["reason"]) == ("indisponivel", True, "first")
    disable(h, reason="second")
    assert listed()["reason"] == "second"
    enable(h)
    assert "fora_de_servico" not in listed()
