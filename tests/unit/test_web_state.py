"""The web console's pure parts: the state fed by snapshot + events, totals, the token gate."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from broker.consumers.billing.ledger import Bill
from broker.consumers.web.auth import COOKIE, UNAUTHORIZED, TokenGate, token_of
from broker.consumers.web.state import ConsoleState, local_midnight
from common.messages import BusEvent
from common.timeutil import format_timestamp

NOW = 1_800_000_000.0

SNAPSHOT: dict[str, Any] = {
    "seq": 10,
    "points": [
        {"id": "P1", "latitude": -12.1, "longitude": -38.9, "estado": "carregando",
         "potencia_kw": 50.0, "preco_kwh": 2.0},
        {"id": "P2", "latitude": -12.2, "longitude": -38.8, "estado": "indisponivel",
         "fora_de_servico": True, "reason": "broken"},
        {"id": "P3", "latitude": -12.3, "longitude": -38.7, "estado": "offline"},
    ],
    "queues": {"P1": [{"vehicle_id": "Q1"}, {"vehicle_id": "Q2"}]},
    "sessions": [
        {"session_id": "S1", "vehicle_id": "V1", "id_ponto_recarga": "P1",
         "inicio": format_timestamp(NOW - 600), "energia_kwh": 3.5, "preco_kwh": 2.0},
    ],
}  # fmt: skip


def ev(seq: int, topic: str, ts: float = NOW, **data: Any) -> BusEvent:
    return BusEvent(seq, ts, topic, data)


def bill(sid: str, start: float, end: float, kwh: str = "10", cost: str = "20.00") -> Bill:
    return Bill(
        session_id=sid,
        vehicle_id="V1",
        point_id="P1",
        started_at=format_timestamp(start),
        ended_at=format_timestamp(end),
        energy_kwh=Decimal(kwh),
        price_kwh=Decimal("2"),
        cost=Decimal(cost),
        currency="BRL",
        payment_method="Pix",
        reason="target_reached",
    )


@pytest.fixture
def state() -> ConsoleState:
    s = ConsoleState()
    s.load_snapshot(SNAPSHOT, NOW)
    return s


def test_snapshot_gives_rows_with_queue_session_and_out_of_service(state: ConsoleState) -> None:
    rows = {r.id: r for r in state.rows()}
    assert list(rows) == ["P1", "P2", "P3"]
    p1 = rows["P1"]
    assert (p1.estado, p1.queue, p1.queue_size, p1.vehicle_id, p1.session_id) == (
        "carregando", ["Q1", "Q2"], 2, "V1", "S1"
    )  # fmt: skip
    assert rows["P2"].fora_de_servico and rows["P2"].reason == "broken"
    assert not rows["P3"].online and rows["P1"].online
    [s] = state.sessions()
    assert (s.session_id, s.energy_kwh, s.active) == ("S1", 3.5, True)
    assert state.seq == 10


def test_events_change_one_point_and_return_its_row(state: ConsoleState) -> None:
    assert state.apply(ev(9, "point.offline", point_id="P1")) is None  # before the snapshot
    row = state.apply(ev(11, "reservation.created", vehicle_id="Q3", point_id="P1"))
    assert row is not None and row.queue == ["Q1", "Q2", "Q3"]
    row = state.apply(ev(12, "reservation.cancelled", vehicle_id="Q1", point_id="P1"))
    assert row is not None and row.queue == ["Q2", "Q3"]
    row = state.apply(ev(13, "charging.completed", session_id="S1", vehicle_id="V1", point_id="P1"))
    assert row is not None and row.vehicle_id is None and state.sessions() == []
    row = state.apply(
        ev(14, "charging.started", session_id="S2", vehicle_id="Q2", point_id="P1",
           started_at=format_timestamp(NOW), price_kwh=2.0, payment_method="Pix")
    )  # fmt: skip
    assert row is not None and (row.vehicle_id, row.queue) == ("Q2", ["Q3"])
    row = state.apply(ev(15, "point.status", point_id="P3", estado="disponivel"))
    assert row is not None and row.online and row.last_heard == format_timestamp(NOW)
    row = state.apply(ev(16, "point.availability", point_id="P3", available=False, reason="x"))
    assert row is not None and row.fora_de_servico and row.reason == "x"
    row = state.apply(ev(17, "point.availability", point_id="P2", available=True, reason=""))
    assert row is not None and not row.fora_de_servico and row.reason is None
    row = state.apply(ev(18, "point.registered", point_id="P9", latitude=1.0, longitude=2.0))
    assert row is not None and (row.latitude, row.longitude) == (1.0, 2.0)
    assert state.apply(ev(19, "vehicle.connected", vehicle_id="V1")) is None
    assert [e.seq for e in state.latest] == [19, 18, 17, 16, 15, 14, 13, 12, 11]
    assert state.seq == 19


def test_bills_are_counted_once_today_and_all_time(state: ConsoleState) -> None:
    midnight = local_midnight(NOW)
    assert state.add_bill(bill("B1", midnight - 7200, midnight - 3600), NOW)  # yesterday
    assert state.add_bill(bill("B2", midnight - 600, midnight + 600, "5", "10.00"), NOW)
    assert state.add_bill(bill("B3", NOW - 1200, NOW - 600, "2.5", "5.00"), NOW)
    assert not state.add_bill(bill("B3", NOW - 1200, NOW - 600), NOW)  # once
    st = state.stats(NOW)
    assert (st.all_time.sessions, st.all_time.energy_kwh, st.all_time.revenue) == (3, 17.5, 35.0)
    assert (st.today.sessions, st.today.energy_kwh, st.today.revenue) == (2, 7.5, 15.0)
    assert st.today.sessions_by_reason == {"target_reached": 2}
    [use] = st.today.utilisation  # P1: 600 s + 600 s billed today + the running S1 (600 s)
    assert use.point_id == "P1" and use.charging_s == pytest.approx(1800)
    assert use.share == pytest.approx(1800 / (NOW - midnight), abs=1e-4)
    assert st.sessions_active == 1 and st.points == 3 and st.points_out_of_service == 1
    # the next day: today starts again, all time keeps everything
    tomorrow = state.stats(midnight + 86400 + 60)
    assert tomorrow.today.sessions == 0 and tomorrow.all_time.sessions == 3


def test_energy_refresh_and_past_events(state: ConsoleState) -> None:
    changed = state.refresh_energy({"sessions": [{"session_id": "S1", "energia_kwh": 7.25}]})
    assert [s.energy_kwh for s in changed] == [7.25]
    assert state.refresh_energy({"sessions": [{"session_id": "S1", "energia_kwh": 7.25}]}) == []
    state.apply(ev(11, "vehicle.connected", vehicle_id="V1"))
    state.add_past([ev(s, "point.status", point_id="P1", estado="disponivel") for s in (8, 9, 10)])
    assert [e.seq for e in state.latest] == [11, 10, 9, 8]


# --- the token gate -------------------------------------------------------------------


def call(gate: TokenGate, path: str, query: bytes = b"", headers: Any = ()) -> list[Any]:
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "query_string": query, "headers": list(headers)}
    asyncio.run(gate(scope, receive, send))
    return sent


async def inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"inside"})


def test_gate_lets_the_token_in_and_refuses_everything_else() -> None:
    gate = TokenGate(inner, "s3cret")
    assert call(gate, "/healthz")[0]["status"] == 200
    assert (
        call(gate, "/api/points", headers=[(b"authorization", b"Bearer s3cret")])[1]["body"]
        == b"inside"
    )
    assert (
        call(gate, "/", headers=[(b"cookie", f"a=b; {COOKIE}=s3cret".encode())])[0]["status"] == 200
    )
    for headers in ([], [(b"authorization", b"Bearer nope")], [(b"cookie", b"ev_token=x")],
                    [(b"authorization", b"Basic s3cret")], [(b"cookie", b"\x00bad")]):  # fmt: skip
        sent = call(gate, "/api/points", headers=headers)
        assert sent[0]["status"] == 401 and sent[1]["body"] == UNAUTHORIZED
    moved = call(gate, "/", query=b"token=s3cret&x=1")[0]
    assert moved["status"] == 303
    hdrs = dict(moved["headers"])
    assert hdrs[b"location"] == b"/?x=1" and hdrs[b"set-cookie"].startswith(b"ev_token=s3cret;")
    assert call(gate, "/", query=b"token=bad")[0]["status"] == 401
    with pytest.raises(ValueError):
        TokenGate(inner, "")


def test_token_of_prefers_the_bearer_header() -> None:
    scope = {"headers": [(b"Authorization", b"bearer  abc "), (b"cookie", b"ev_token=def")]}
    assert token_of(scope) == "abc"
    assert token_of({"headers": [(b"cookie", b"ev_token=def")]}) == "def"
    assert token_of({"headers": []}) is None


def test_a_point_out_of_service_stays_indisponivel_and_shows_its_liveness(
    state: ConsoleState,
) -> None:
    state.apply(ev(11, "point.availability", point_id="P1", available=False, reason="r"))
    state.apply(ev(12, "point.status", point_id="P1", estado="indisponivel"))
    row = state.apply(ev(13, "point.offline", point_id="P1", last_heard=format_timestamp(NOW)))
    assert row is not None and (row.estado, row.online, row.fora_de_servico) == (
        "indisponivel", False, True
    )  # fmt: skip
    row = state.apply(ev(14, "point.online", point_id="P1"))
    assert row is not None and row.online and row.estado == "indisponivel"
    assert state.stats(NOW).points_online == 2  # P1 and P2 (P3 is offline)


def test_sites_follow_snapshots_and_site_events(state: ConsoleState) -> None:
    snap = dict(SNAPSHOT)
    snap["sites"] = [
        {"name": "depot", "limit_kw": 50.0, "min_kw": 4.2, "points": ["P*"],
         "allocated_kw": 22.0, "drawn_kw": 21.5,
         "sessions": [{"session_id": "S1", "point_id": "P1", "kw": 22.0, "drawn_kw": 21.5}]},
    ]  # fmt: skip
    state.load_snapshot(snap, NOW)
    (site,) = state.site_rows()
    assert (site.limit_kw, site.allocated_kw, site.drawn_kw) == (50.0, 22.0, 21.5)
    assert state.sessions()[0].potencia_kw == 22.0
    state.apply(ev(11, "site.updated", site="depot", limit_kw=10.0, min_kw=4.2, points=["P*"]))
    state.apply(
        ev(12, "site.allocation", site="depot", limit_kw=10.0, allocated_kw=0.0,
           sessions=[{"session_id": "S1", "point_id": "P1", "kw": 0.0}])
    )  # fmt: skip
    (site,) = state.site_rows()
    assert site.limit_kw == 10.0 and site.sessions[0].kw == 0.0
    (running,) = state.sessions()
    assert running.aguardando_energia and running.potencia_kw == 0.0
    state.apply(ev(13, "site.updated", site="depot", limit_kw=10.0, min_kw=4.2, points=[],
                   removed=True))  # fmt: skip
    assert state.site_rows() == []


def test_a_points_tarifa_follows_tariff_updated_events() -> None:
    """The console's ``tarifa`` of a point changes with ``tariff.updated`` (set,
    assign, remove) as the core's does, not only at its next snapshot."""
    import json
    from datetime import UTC

    from tests.support.core_harness import Harness

    tou = {
        "id": "tou",
        "currency": "BRL",
        "elements": [
            {"price_components": [{"type": "FLAT", "price": 1.50, "vat": 12, "step_size": 1}]},
            {"price_components": [{"type": "ENERGY", "price": 1.80, "step_size": 1}]},
        ],
    }
    h = Harness(tz=UTC)
    h.point("CP01")
    h.point("CP02", lat=-12.27)
    st = ConsoleState()
    st.load_snapshot(h.core.snapshot(h.now), h.now)
    assert st.tariffs is None and st.points["CP01"].tarifa is None
    seen = h.core.last_seq

    def op(action: str, **kw: Any) -> list[Any]:
        nonlocal seen
        body = json.dumps(kw.pop("tariff")) if "tariff" in kw else None
        reply, fx = h.core.tariffs(action, body, kw.get("tariff_id"), kw.get("points"), "op", h.now)
        assert reply.get("ok") is True, reply
        h.apply(fx)
        rows = []
        for e in h.events:
            if e.seq > seen:
                assert st.apply(e) is None
                rows.extend(st.retariffed)
        seen = h.core.last_seq
        return rows

    def core_tarifa(pid: str) -> Any:
        (view,) = [p for p in h.core.snapshot(h.now)["points"] if p["id"] == pid]
        return view.get("tarifa")

    assert op("set", tariff=tou) == []  # not assigned yet: nothing changes
    rows = op("assign", tariff_id="tou", points="CP01")
    assert [r.id for r in rows] == ["CP01"]
    assert st.points["CP01"].tarifa == core_tarifa("CP01") is not None
    assert st.points["CP02"].tarifa is None
    cheaper = {**tou, "elements": tou["elements"][1:]}
    rows = op("set", tariff=cheaper)
    assert [r.id for r in rows] == ["CP01"] and rows[0].tarifa == core_tarifa("CP01")
    assert st.points["CP01"].tarifa["flat"] == 0.0
    rows = op("remove", tariff_id="tou")
    assert [r.id for r in rows] == ["CP01"] and st.points["CP01"].tarifa is None
    assert core_tarifa("CP01") is None


def test_a_parked_session_shows_as_parked_to_the_operator() -> None:
    """Charging ended under a tariff with parking, the vehicle still plugged in: the
    snapshot says since when it is parked and the console's session shows it."""
    import json
    from datetime import UTC

    from tests.support.core_harness import Harness

    idle = {
        "id": "idle",
        "currency": "BRL",
        "elements": [
            {
                "price_components": [
                    {"type": "ENERGY", "price": 2.0, "step_size": 1},
                    {"type": "PARKING_TIME", "price": 6.0, "step_size": 60},
                ]
            }
        ],
    }
    h = Harness(tz=UTC)
    h.point("CP01")
    for action, body, tid, pattern in (("set", json.dumps(idle), None, None),
                                       ("assign", None, "idle", "CP01")):  # fmt: skip
        reply, fx = h.core.tariffs(action, body, tid, pattern, "op", h.now)
        assert reply["ok"] is True
        h.apply(fx)
    sid = h.start_charging("CAR1")
    st = ConsoleState()
    st.load_snapshot(h.core.snapshot(h.now), h.now)
    assert st.sessions()[0].parked_since is None
    h.at(600)
    h.complete("CP01", sid, "CAR1", energy=10.0)
    ended = h.now
    h.at(30)
    changed = st.refresh_energy(h.core.snapshot(h.now))
    assert [s.session_id for s in changed] == [sid]
    assert changed[0].parked_since == format_timestamp(ended) and changed[0].active
    st.load_snapshot(h.core.snapshot(h.now), h.now)
    assert st.sessions()[0].parked_since == format_timestamp(ended)
