"""ev-broker serve: vehicles prove who they are (security contract, "Vehicles").

Each impersonation that worked before fails here, against a real broker process
with raw TCP sockets: a second connection naming another driver's id can no
longer cancel the reservation, stop the charge, read the bill or status, or
take the pushes. The original Go client (unframed JSON, ``CAR<port>`` ids)
keeps working unchanged in the default ``open`` mode.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_broker_vehicles import arrive, online_point, reserve
from tests.support.procs import BrokerPorts, Proc, start_broker
from tests.support.raw_clients import (
    LAT,
    LON,
    FakeStation,
    Vehicle,
    http_get,
    metric,
    station,
    vehicle,
    zmq_ctx,
)

pytestmark = pytest.mark.e2e


def go_line(type_: str, **data: Any) -> str:
    """A request as the original Go client writes it: compact, no newline."""
    import json

    return json.dumps({"type": type_, "data": data}, ensure_ascii=False, separators=(",", ":"))


def charging(st: FakeStation, v: Vehicle, vid: str) -> str:
    """Start a session for ``vid`` at CP01 through the fake station; its session id."""
    v.send(
        go_line(
            "chegada",
            id_veiculo=vid,
            id_ponto_recarga="CP01",
            nivel_bateria=20,
            nivel_carregar=80,
            metodo_pagamento="Pix",
        )
    )
    start = st.recv_type("start")
    st.ack(start)
    reply = v.recv_type("chegada_response")
    assert reply["data"]["code"] == "started", reply
    return str(reply["data"]["session_id"])


def complete(st: FakeStation, session_id: str, vid: str) -> None:
    st.send(
        {
            "type": "session_complete",
            "session_id": session_id,
            "vehicle_id": vid,
            "energia_kwh": 10.0,
            "nivel_inicial": 20,
            "nivel_final": 50,
            "started_at": time.time() - 60,
            "ended_at": time.time(),
            "reason": "stopped",
        }
    )
    st.recv_type("session_ack")


def code_of(reply: dict[str, Any]) -> str:
    return str(reply["data"]["code"])


def test_go_client_ids_cannot_be_taken_over(broker: tuple[Proc, BrokerPorts]) -> None:
    """The original client's CAR<port> id: a second connection naming it is forbidden
    for every request, pushes stay with the owner, and the owner keeps working."""
    _, ports = broker
    with zmq_ctx() as ctx, station(ctx, ports.station, "CP01") as st:
        st.greet()
        online_point(ports)
        with vehicle(ports.vehicle) as victim, vehicle(ports.vehicle) as attacker:
            vid = f"CAR{victim.local_port}"
            victim.send(
                go_line("reserva", id_veiculo=vid, id_ponto_recarga="CP01", tempo_estimado=10)
            )
            assert code_of(victim.recv_type("reserva_response")) == "reserved"
            st.recv_type("hold")
            here = {"latitude": LAT, "longitude": LON}
            for rtype, data in [
                ("cancelar", {"id_ponto_recarga": "CP01"}),
                ("status", {}),
                ("custos", {}),
                ("parar", {"id_ponto_recarga": "CP01"}),
                ("bateria", {"nivel_bateria": 50, "localizacao": here}),
                ("reserva", {"id_ponto_recarga": "CP01"}),
            ]:
                reply = attacker.request(rtype, {"id_veiculo": vid, **data})
                assert reply["type"] == "erro" and code_of(reply) == "forbidden", (rtype, reply)
            session_id = charging(st, victim, vid)
            stop = attacker.request("parar", {"id_veiculo": vid, "id_ponto_recarga": "CP01"})
            assert code_of(stop) == "forbidden"
            assert not any(m.get("type") == "stop" for m in st.received)
            status = victim.request("status", {"id_veiculo": vid})
            assert status["data"]["sessao"]["session_id"] == session_id
            complete(st, session_id, vid)
            assert victim.recv_type("custo_final")["data"]["session_id"] == session_id
            assert attacker.request("ping", {}) == {"type": "pong", "data": {}}
            assert attacker.pushes == []
            bill = victim.request("custos", {"id_veiculo": vid})
            assert bill["type"] == "extrato" and len(bill["data"]["sessoes"]) == 1
        # the owner is gone: the id may be used again (the original system's behaviour),
        # but its history stays with the connection that made it (second round)
        with vehicle(ports.vehicle) as later:
            assert code_of(later.request("custos", {"id_veiculo": vid})) == "forbidden"
            assert code_of(reserve(later, vid)) == "reserved"
    _, text = http_get(ports.http, "/metrics")
    assert metric(text, 'evcharge_rejected_total{edge="vehicles",reason="forbidden"}') >= 7


def test_registered_vehicle_needs_its_token(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    online_point(ports)
    with vehicle(ports.vehicle) as owner, vehicle(ports.vehicle) as attacker:
        reg = owner.request("registrar", {"id_veiculo": "alice"}, id=1)
        assert reg["type"] == "registro" and reg["id"] == 1
        assert reg["data"]["status"] == "success" and code_of(reg) == "registered"
        token = reg["data"]["token"]
        assert len(token) == 43
        assert code_of(reserve(owner, "alice")) == "reserved"
        for rtype, data in [
            ("cancelar", {"id_ponto_recarga": "CP01"}),
            ("parar", {"id_ponto_recarga": "CP01"}),
            ("custos", {}),
            ("status", {}),
            ("reserva", {"id_ponto_recarga": "CP01"}),
        ]:
            reply = attacker.request(rtype, {"id_veiculo": "alice", **data})
            assert reply["type"] == "erro" and code_of(reply) == "unauthenticated", rtype
        # reads of the map stay open, but they do not make the attacker alice's receiver
        here = {"latitude": LAT, "longitude": LON}
        looked = attacker.request("consulta", {"id_veiculo": "alice", "localizacao": here})
        assert looked["type"] == "lista_pontos"
        again = attacker.request("registrar", {"id_veiculo": "alice"})
        assert code_of(again) == "already_registered" and "token" not in again["data"]
        wrong = attacker.request("autenticar", {"id_veiculo": "alice", "token": "A" * 43})
        assert wrong["type"] == "erro" and code_of(wrong) == "forbidden"
        assert owner.request("status", {"id_veiculo": "alice"})["data"]["reserva"] is not None
        cancel = owner.request("cancelar", {"id_veiculo": "alice", "id_ponto_recarga": "CP01"})
        assert code_of(cancel) == "cancelled"
        assert attacker.pushes == []
    # a new connection with the token acts for alice
    with vehicle(ports.vehicle) as phone:
        ok = phone.request("autenticar", {"id_veiculo": "alice", "token": token})
        assert ok == {
            "type": "autenticado",
            "data": {"status": "success", "code": "authenticated", "message": "Authenticated"},
        }
        assert code_of(reserve(phone, "alice")) == "reserved"


def test_wrong_tokens_rate_limit_the_address(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    with vehicle(ports.vehicle) as owner:
        token = owner.request("registrar", {"id_veiculo": "bob"})["data"]["token"]
    with vehicle(ports.vehicle) as guesser:
        for i in range(5):
            reply = guesser.request("autenticar", {"id_veiculo": "bob", "token": f"guess{i}"})
            assert code_of(reply) == "forbidden"
        blocked = guesser.request("autenticar", {"id_veiculo": "bob", "token": token})
        assert blocked["type"] == "erro" and code_of(blocked) == "rate_limited"
    with vehicle(ports.vehicle) as same_address:  # a new connection does not reset it
        blocked = same_address.request("autenticar", {"id_veiculo": "bob", "token": token})
        assert code_of(blocked) == "rate_limited"
    _, text = http_get(ports.http, "/metrics")
    assert metric(text, 'evcharge_rejected_total{edge="vehicles",reason="rate_limited"}') == 2


def test_pushes_go_only_to_proven_connections(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    online_point(ports)
    with (
        vehicle(ports.vehicle) as first,
        vehicle(ports.vehicle) as owner,
        vehicle(ports.vehicle) as snoop,
    ):
        assert code_of(reserve(first, "CARFIRST")) == "reserved"
        owner.request("registrar", {"id_veiculo": "carol"})
        assert code_of(reserve(owner, "carol")) == "reserved"
        here = {"latitude": LAT, "longitude": LON}
        snoop.request("bateria", {"id_veiculo": "carol", "nivel_bateria": 50, "localizacao": here})
        first.request("cancelar", {"id_veiculo": "CARFIRST", "id_ponto_recarga": "CP01"})
        assert owner.recv_type("sua_vez")["data"]["id_ponto_recarga"] == "CP01"
        assert snoop.request("ping", {}) == {"type": "pong", "data": {}}
        assert snoop.pushes == []


def test_tokens_survive_kill_9(tmp_path: Path, ports: BrokerPorts) -> None:
    db = str(tmp_path / "broker.db")
    proc = start_broker(ports, db)
    try:
        with vehicle(ports.vehicle) as v:
            token = v.request("registrar", {"id_veiculo": "dave"})["data"]["token"]
        proc.kill9()
        proc.stop()  # reaps it and closes its output pipe
        proc = start_broker(ports, db)
        with vehicle(ports.vehicle) as v:
            again = v.request("registrar", {"id_veiculo": "dave"})
            assert code_of(again) == "already_registered"
            ok = v.request("autenticar", {"id_veiculo": "dave", "token": token})
            assert code_of(ok) == "authenticated"
        import sqlite3

        with sqlite3.connect(db) as conn:
            stored = conn.execute("SELECT value FROM vehicle WHERE key = 'dave'").fetchone()[0]
        assert token not in stored and "sha256" in stored
    finally:
        proc.stop()


def test_required_mode(tmp_path: Path, ports: BrokerPorts) -> None:
    proc = start_broker(ports, str(tmp_path / "broker.db"), "--vehicle-auth", "required")
    try:
        online_point(ports)
        with vehicle(ports.vehicle) as v:
            here = {"latitude": LAT, "longitude": LON}
            reads = v.request(
                "bateria", {"id_veiculo": "erin", "nivel_bateria": 50, "localizacao": here}
            )
            assert reads["type"] == "pontos_disponiveis"
            for rtype, data in [
                ("reserva", {"id_ponto_recarga": "CP01"}),
                ("custos", {}),
                ("status", {}),
            ]:
                reply = v.request(rtype, {"id_veiculo": "erin", **data})
                assert code_of(reply) == "unauthenticated", rtype
            assert code_of(v.request("registrar", {"id_veiculo": "erin"})) == "registered"
            assert code_of(reserve(v, "erin")) == "reserved"
        with vehicle(ports.vehicle) as go:  # the original client cannot change state here
            go.send(go_line("reserva", id_veiculo=f"CAR{go.local_port}", id_ponto_recarga="CP01"))
            assert code_of(go.reply()) == "unauthenticated"
    finally:
        proc.stop()


def test_bad_vehicle_auth_option_is_a_usage_error(tmp_path: Path, ports: BrokerPorts) -> None:
    from tests.support.procs import start

    proc = start(
        ["python", "-m", "broker", "serve", *ports.cli_args(), "--db", str(tmp_path / "b.db"),
         "--vehicle-auth", "maybe"]
    )  # fmt: skip
    assert proc.popen.wait(timeout=20) == 2
    assert "--vehicle-auth" in proc.drain()
    proc.stop()


def test_arrival_by_an_intruder_is_refused(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    online_point(ports)
    with vehicle(ports.vehicle) as owner, vehicle(ports.vehicle) as intruder:
        assert code_of(reserve(owner, "CARX1")) == "reserved"
        assert code_of(arrive(intruder, "CARX1")) == "forbidden"
