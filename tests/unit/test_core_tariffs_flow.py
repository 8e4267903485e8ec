"""Tariffs in the core: operator ops, sessions priced by the tariff they started
with, parking until the connector is free, the CDR in ``custo_final``, restore."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from broker.core.effects import Effect
from tests.support.core_harness import Harness, wire

TOU = {
    "id": "tou",
    "currency": "BRL",
    "elements": [
        {"price_components": [{"type": "FLAT", "price": 1.00, "vat": 10, "step_size": 1}]},
        {
            "price_components": [{"type": "ENERGY", "price": 3.00, "step_size": 1}],
            "restrictions": {"start_time": "18:00", "end_time": "21:00"},
        },
        {
            "price_components": [
                {"type": "ENERGY", "price": 2.00, "step_size": 1},
                {"type": "PARKING_TIME", "price": 6.00, "step_size": 1},
            ]
        },
    ],
}
PER_MINUTE = {
    "id": "minute",
    "currency": "BRL",
    "elements": [
        {
            "price_components": [
                {"type": "FLAT", "price": 2.50, "step_size": 1},
                {"type": "TIME", "price": 12.00, "step_size": 60},
            ]
        }
    ],
}
# 2023-11-14T22:13:20Z is 1_700_000_000; the harness starts there
T0 = 1_700_000_000.0


def op(h: Harness, action: str, **kw: Any) -> dict[str, Any]:
    reply, fx = h.core.tariffs(
        action, kw.get("tariffs"), kw.get("tariff_id"), kw.get("points"), "ops", h.now
    )
    h.apply(fx)
    return reply


def setup(h: Harness, tariff: dict[str, Any], pattern: str = "CP*") -> None:
    assert op(h, "set", tariffs=json.dumps(tariff))["ok"] is True
    assert op(h, "assign", tariff_id=tariff["id"], points=pattern)["ok"] is True


def final(fx: list[Effect]) -> dict[str, Any]:
    (push,) = Harness.pushes(fx, "custo_final")
    out: dict[str, Any] = wire(push.data)
    return out


def test_set_assign_list_remove_are_persisted_and_published() -> None:
    h = Harness()
    h.point("CP01")
    reply = op(h, "set", tariffs=json.dumps([TOU, PER_MINUTE]))
    assert reply["tariffs"] == ["tou", "minute"] and reply["seq"] == h.core.last_seq
    assert reply["warnings"] == []
    assert ("tariff", "tou") in h.store
    reply = op(h, "assign", tariff_id="tou", points="CP0*")
    assert reply["points"] == 1
    updates = [e.data for e in h.events if e.topic == "tariff.updated"]
    assert [(u["tariff_id"], u["action"]) for u in updates] == [
        ("tou", "set"),
        ("minute", "set"),
        ("tou", "assign"),
    ]
    assert updates[0]["tariff"]["elements"][1]["restrictions"]["start_time"] == "18:00"
    listed = op(h, "list")
    assert [t["id"] for t in listed["tariffs"]] == ["minute", "tou"]
    assert listed["assignments"] == [{"points": "CP0*", "tariff_id": "tou"}]
    restored = h.restored()
    assert restored.tariffs("list", None, None, None, "x", h.now)[0] == listed
    assert op(h, "remove", tariff_id="tou")["ok"] is True
    assert ("tariff", "tou") not in h.store
    assert op(h, "list")["assignments"] == []


def test_bad_requests_store_nothing() -> None:
    h = Harness()
    before = dict(h.store)
    bad = {**TOU, "currency": "REAIS"}
    reply = op(h, "set", tariffs=json.dumps(bad))
    assert "currency" in reply["error"]
    assert op(h, "assign", tariff_id="nope", points="*")["error"] == "unknown tariff 'nope'"
    assert "error" in op(h, "explode", tariff_id="x")
    assert "tariffs" in op(h, "set", tariffs=None)["error"]
    assert h.store == before


def test_a_gap_in_a_dimension_is_warned() -> None:
    h = Harness()
    evening_only = {
        "id": "eve",
        "currency": "BRL",
        "elements": [
            {
                "price_components": [{"type": "ENERGY", "price": 3, "step_size": 1}],
                "restrictions": {"start_time": "18:00", "end_time": "21:00"},
            }
        ],
    }
    reply = op(h, "set", tariffs=json.dumps(evening_only))
    assert reply["warnings"] == ["tariff eve: ENERGY has no price at some moments (costs 0 then)"]


def test_a_point_without_tariff_bills_exactly_as_before() -> None:
    h = Harness()
    h.point("CP01", preco_kwh=2.0)
    h.point("XX01", preco_kwh=2.0)
    setup(h, TOU, "CP*")
    sid = h.start_charging("CAR1", "XX01")
    h.at(600)
    fx = h.complete("XX01", sid, "CAR1", energy=36.0)
    bill = final(fx)
    assert "cdr" not in bill and bill["cost"] == 72.0
    (done,) = h.published(fx, "charging.completed")
    assert "cdr" not in done


def test_start_fee_and_per_minute_price() -> None:
    h = Harness(tz=UTC)
    h.point("CP01")
    setup(h, PER_MINUTE)
    sid = h.start_charging("CAR1")
    h.at(125)  # 2 min 5 s -> 3 minutes in 60 s steps
    bill = final(h.complete("CP01", sid, "CAR1", energy=10.0))
    # 2.50 + 3 x 0.20 = 3.10
    assert bill["cost"] == 3.10
    cdr = bill["cdr"]
    assert cdr["total_fixed_cost"] == {"excl_vat": 2.5, "incl_vat": 2.5}
    assert cdr["total_time_cost"] == {"excl_vat": 0.6, "incl_vat": 0.6}
    assert cdr["tariff_id"] == "minute" and cdr["id"] == sid
    assert cdr["total_energy"] == 36.0 and cdr["total_time"] == round(125 / 3600, 4)


def test_parking_is_billed_until_the_connector_is_free_and_the_point_stays_occupied() -> None:
    h = Harness(tz=UTC)  # 22:13 UTC: the off-peak element
    h.point("CP01")
    setup(h, TOU)
    sid = h.start_charging("CAR1")
    h.at(1800)
    fx = h.complete("CP01", sid, "CAR1", energy=20.0)
    assert h.pushes(fx, "custo_final") == []  # waits for the unplug
    h.at(5)
    h.dgram("CP01", estado="disponivel", conector_livre=False)
    snap = h.core.snapshot(h.now)
    assert snap["points"][0]["session_id"] == sid  # still occupied
    h.at(25)
    fx = h.dgram("CP01", estado="disponivel", conector_livre=True)
    bill = final(fx)
    cdr = bill["cdr"]
    # FLAT 1.00 + 10 % VAT, 36 kWh (20 % -> 80 % of 60 kWh) x 2.00, 30 s parking x 6.00 / h
    assert cdr["total_parking_time"] == round(30 / 3600, 4)
    assert cdr["total_parking_cost"]["excl_vat"] == 0.05
    assert bill["cost"] == round(1.10 + 72.00 + 0.05, 2)
    assert [p["dimensions"][0]["type"] for p in cdr["charging_periods"]] == [
        "ENERGY",
        "PARKING_TIME",
    ]
    # a second completion of the parked session changes nothing
    assert h.pushes(h.complete("CP01", sid, "CAR1", energy=20.0), "custo_final") == []


def test_parking_stops_at_the_cap_billed_and_counted() -> None:
    h = Harness(tz=UTC, max_parking_s=60.0)
    h.point("CP01")
    setup(h, TOU)
    sid = h.start_charging("CAR1")
    h.at(100)
    h.complete("CP01", sid, "CAR1", energy=1.0)
    fx = h.tick(61)
    cdr = final(fx)["cdr"]
    assert cdr["total_parking_time"] == round(60 / 3600, 4)
    assert h.core.stats()["parking_capped"] == 1


def test_a_parked_session_survives_a_restart() -> None:
    h = Harness(tz=UTC)
    h.point("CP01")
    setup(h, TOU)
    sid = h.start_charging("CAR1")
    h.at(100)
    h.complete("CP01", sid, "CAR1", energy=5.0)
    core = h.restored(1.0)
    h.core = core
    h.at(10)
    h.dgram("CP01", estado="disponivel", conector_livre=False)
    h.at(10)
    fx = h.dgram("CP01", estado="disponivel", conector_livre=True)
    cdr = final(fx)["cdr"]
    assert cdr["total_energy"] == 36.0 and cdr["total_parking_time"] == round(20 / 3600, 4)


def test_a_running_session_keeps_the_tariff_it_started_with() -> None:
    h = Harness(tz=UTC)
    h.point("CP01")
    setup(h, PER_MINUTE)
    sid = h.start_charging("CAR1")
    op(h, "set", tariffs=json.dumps({**PER_MINUTE, "elements": TOU["elements"][:1]}))
    op(h, "remove", tariff_id="minute")
    h.at(60)
    bill = final(h.complete("CP01", sid, "CAR1", energy=10.0))
    assert bill["cost"] == 2.50 + 0.20


def test_power_changes_split_the_charging_periods() -> None:
    h = Harness(tz=UTC)
    h.point("CP01", potencia_kw=22.0)
    setup(h, PER_MINUTE)
    sid = h.start_charging("CAR1")
    h.at(600)
    assert h.core.set_session_power(sid, 11.0, h.now) is True
    assert h.core.set_session_power(sid, 11.0, h.now) is False
    h.at(600)
    cdr = final(h.complete("CP01", sid, "CAR1", energy=5.5))["cdr"]
    periods = cdr["charging_periods"]
    assert len(periods) == 2
    energies = [p["dimensions"][0]["volume"] for p in periods]
    assert energies == [24.0, 12.0]  # 36 kWh shared as 22 kW x 10 min and 11 kW x 10 min
    assert [p["dimensions"][2] for p in periods] == [
        {"type": "MAX_POWER", "volume": 22.0},
        {"type": "MAX_POWER", "volume": 11.0},
    ]


def test_tariff_records_are_plain_json() -> None:
    h = Harness()
    setup(h, TOU)
    persisted = [v for (t, _k), v in h.store.items() if t == "tariff"]
    assert json.loads(json.dumps(persisted)) == persisted


# --- what drivers see -----------------------------------------------------------------

EVENING = {
    "id": "eve",
    "currency": "BRL",
    "elements": [
        {
            "price_components": [{"type": "ENERGY", "price": 3.00, "vat": 10, "step_size": 1}],
            "restrictions": {"start_time": "22:30", "end_time": "23:00"},
        },
        {
            "price_components": [
                {"type": "ENERGY", "price": 1.00, "vat": 10, "step_size": 1},
                {"type": "PARKING_TIME", "price": 6.00, "step_size": 1},
            ]
        },
    ],
}
HERE = {"latitude": -12.26, "longitude": -38.96}


def points(h: Harness, **kw: Any) -> list[dict[str, Any]]:
    reply = Harness.reply(h.request("CAR9", "bateria", nivel_bateria=20, localizacao=HERE, **kw))
    out: list[dict[str, Any]] = wire(reply.data)["pontos"]
    return out


def test_point_views_show_the_tariff_in_force_and_when_it_changes() -> None:
    h = Harness(tz=UTC)  # 22:13:20 UTC
    h.point("CP01", preco_kwh=2.0)
    h.point("XX01", preco_kwh=2.0, lat=-12.27)
    before = points(h)
    assert all("tarifa" not in p for p in before)
    setup(h, EVENING, "CP*")
    cp, xx = points(h)
    assert "tarifa" not in xx and xx["preco_kwh"] == 2.0
    assert cp["tarifa"] == {
        "id": "eve",
        "currency": "BRL",
        "energy_kwh": 1.1,
        "per_minute": 0.0,
        "parking_per_minute": 0.1,
        "flat": 0.0,
        "valid_until": "2023-11-14T22:30:00.000Z",
    }
    assert cp["preco_kwh"] == 1.1
    assert list(cp)[-2:] == ["tarifa", "espera_estimada_min"]
    h.at(17 * 60)  # 22:30:20: the evening price, cached view replaced
    cp, _ = points(h)
    assert cp["tarifa"]["energy_kwh"] == 3.3 and cp["preco_kwh"] == 3.3


def test_estimated_cost_and_ordering_by_cost() -> None:
    h = Harness(tz=UTC)
    h.point("CP01", preco_kwh=2.0, potencia_kw=60.0)  # nearest
    h.point("XX01", preco_kwh=0.5, potencia_kw=60.0, lat=-12.27)
    setup(h, EVENING, "CP*")
    near = points(h, capacidade_kwh=60, nivel_carregar=80)
    # 36 kWh in 36 min at 60 kW from 22:13 (estimates start on the minute):
    # 17 kWh at 1.10 before 22:30, 19 kWh at 3.30 after
    assert [p["id"] for p in near] == ["CP01", "XX01"]
    assert near[1]["custo_estimado"] == 18.0
    assert near[0]["custo_estimado"] == 81.40
    assert list(near[0])[-1] == "custo_estimado"
    cheap = points(h, capacidade_kwh=60, nivel_carregar=80, ordenar="custo")
    assert [p["id"] for p in cheap] == ["XX01", "CP01"]
    plain = Harness.reply(h.request("CAR9", "consulta", localizacao=HERE)).data
    assert all("custo_estimado" not in p for p in wire(plain))


def test_snapshots_show_tariffs_and_the_running_cost() -> None:
    h = Harness(tz=UTC)
    h.point("CP01", potencia_kw=22.0)
    h.point("XX01", preco_kwh=2.0)
    setup(h, PER_MINUTE, "CP*")
    sid = h.start_charging("CAR1")
    flat = h.start_charging("CAR2", "XX01")
    h.at(120)
    h.dgram("XX01", estado="carregando", session_id=flat, energia_kwh=3.0)
    snap = h.core.snapshot(h.now)
    views = {p["id"]: p for p in snap["points"]}
    assert views["CP01"]["tarifa"]["id"] == "minute" and "tarifa" not in views["XX01"]
    costs = {s["session_id"]: s["custo_parcial"] for s in snap["sessions"]}
    assert costs == {sid: 2.90, flat: 6.0}  # 2.50 + 2 min at 0.20; 3 kWh at 2.00
