"""ev-broker serve, vehicle TCP protocol: every request and error, framing, identity, order.

A real broker process on free ports (fixture ``broker``); vehicles are raw TCP
sockets writing exact bytes; stations are a raw UDP socket and a raw zmq DEALER.
The raw clients come from ``tests.support.raw_clients``; the helpers below (and the
raw clients, re-exported) are shared by the other broker end-to-end test modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.codec_samples import ORIGINAL
from tests.support.procs import BrokerPorts, Proc, broker_ports, start_broker
from tests.support.raw_clients import (
    LAT,
    LON,
    FakeStation,
    Vehicle,
    http_get,
    keepalive,
    metric,
    send_status,
    station,
    vehicle,
    wait_for,
    zmq_ctx,
)

#: What the other broker end-to-end modules import from here.
__all__ = [
    "LAT",
    "LON",
    "arrive",
    "http_get",
    "keepalive",
    "metric",
    "online_point",
    "reserve",
    "send_status",
    "station",
    "vehicle",
    "wait_for",
    "welcomed_station",
    "zmq_ctx",
]

pytestmark = pytest.mark.e2e


# --- helpers shared by the broker e2e modules ---------------------------------------------


@contextlib.contextmanager
def welcomed_station(ports: BrokerPorts, point_id: str = "CP01") -> Iterator[FakeStation]:
    """A station that said hello and was welcomed, its point online for vehicles."""
    with zmq_ctx() as ctx, station(ctx, ports.station, point_id) as st:
        st.hello()
        st.recv_type("welcome")
        online_point(ports, point_id)
        yield st


def online_point(ports: BrokerPorts, point_id: str = "CP01") -> None:
    """Register ``point_id`` by datagram and wait until a vehicle can see it."""
    send_status(ports.status, point_id)
    with vehicle(ports.vehicle) as v:

        def seen() -> bool:
            reply = v.request(
                "consulta",
                {"id_veiculo": "PROBE", "localizacao": {"latitude": LAT, "longitude": LON}},
            )
            return any(p["id"] == point_id for p in reply["data"])

        wait_for(seen, what=f"{point_id} registered")


def reserve(v: Vehicle, vid: str, point: str = "CP01", **extra: Any) -> dict[str, Any]:
    return v.request("reserva", {"id_veiculo": vid, "id_ponto_recarga": point, **extra})


def arrive(v: Vehicle, vid: str, point: str = "CP01", **extra: Any) -> dict[str, Any]:
    data = {
        "id_veiculo": vid,
        "id_ponto_recarga": point,
        "nivel_bateria": 20,
        "nivel_carregar": 80,
        "metodo_pagamento": "Pix",
        **extra,
    }
    return v.request("chegada", data)


# --- the original client -------------------------------------------------------------------


def test_original_client_lines_work_unchanged(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    with welcomed_station(ports) as st, vehicle(ports.vehicle) as v:
        v.send(ORIGINAL[0])
        reply = v.recv()
        assert reply["type"] == "pontos_disponiveis"
        assert "id" not in reply
        point = reply["data"]["pontos"][0]
        assert point["id"] == "CP01" and point["estado"] == "disponivel"
        assert point["available"] is True and point["queue_capacity"] == 5
        assert point["distance"] == pytest.approx(0.111, abs=0.002)
        v.send(ORIGINAL[1])
        reply = v.recv()
        assert reply["type"] == "lista_pontos"
        assert [p["id"] for p in reply["data"]] == ["CP01"]
        v.send(ORIGINAL[2])
        reply = v.recv_type("reserva_response")
        data = reply["data"]
        assert (data["status"], data["code"], data["message"]) == (
            "success",
            "reserved",
            "Reserve confirmed",
        )
        assert data["vehicle_id"] == "CAR40312" and data["id_ponto_recarga"] == "CP01"
        assert data["posicao"] == 1 and data["reservation_id"]
        st.recv_type("hold")
        v.send(ORIGINAL[3])
        start = st.recv_type("start")
        assert start["vehicle_id"] == "CAR40312"
        st.send({"type": "ack", "cmd_id": start["cmd_id"], "ok": True})
        reply = v.recv_type("chegada_response")
        assert reply["data"]["status"] == "success"
        assert reply["data"]["code"] == "started" and reply["data"]["session_id"]


def test_original_client_invalid_payment_is_invalid(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    line = ORIGINAL[3].replace("Débito em conta", "Método de pagamento inválido")
    with vehicle(ports.vehicle) as v:
        v.send(line)
        reply = v.recv()
        assert reply["data"]["code"] == "invalid"
        assert "metodo_pagamento" in json.dumps(reply["data"], ensure_ascii=False)
        # the connection stays usable
        assert v.request("ping", {})["type"] == "pong"


# --- framing -----------------------------------------------------------------------------------


def test_split_and_coalesced_writes(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    with vehicle(ports.vehicle) as v:
        both = b'{"type":"ping","data":{},"id":1}  {"type":"ping","data":{},"id":2}\n'
        v.send(both)
        assert [v.recv()["id"], v.recv()["id"]] == [1, 2]
        line = '{"type":"custos","data":{"id_veiculo":"CARSPLIT"},"id":"é"}'.encode()
        for i in range(0, len(line), 3):
            v.send(line[i : i + 3])
            time.sleep(0.002)
        reply = v.recv()
        assert reply["type"] == "extrato" and reply["id"] == "é"
        assert reply["data"]["vehicle_id"] == "CARSPLIT"


def test_id_echo_of_every_scalar(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    with vehicle(ports.vehicle) as v:
        for rid in (7, "abc", 2.5, True, None):
            reply = v.request("ping", {}, id=rid)
            assert reply == {"type": "pong", "data": {}, "id": rid}
        assert "id" not in v.request("ping", {})


def test_too_large_line_is_refused_and_closed(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    with vehicle(ports.vehicle) as v:
        big = '{"type":"ping","data":{"pad":"' + "x" * (70 * 1024) + '"}}\n'
        v.send(big)
        reply = v.recv()
        assert reply["type"] == "erro" and reply["data"]["code"] == "too_large"
        assert v.closed_by_peer()
    with vehicle(ports.vehicle) as v:  # the broker is fine
        assert v.request("ping", {})["type"] == "pong"


def test_garbage_then_valid_request(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    with vehicle(ports.vehicle) as v:
        v.send(b"\x00\xffnot json at all {{{\n")
        reply = v.recv()
        assert reply["type"] == "erro" and reply["data"]["code"] == "bad_json"
        assert v.request("ping", {}, id=3) == {"type": "pong", "data": {}, "id": 3}


def test_unknown_type_and_invalid_fields(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    with vehicle(ports.vehicle) as v:
        reply = v.request("voar", {}, id="u")
        assert reply["type"] == "erro" and reply["id"] == "u"
        assert reply["data"]["code"] == "unknown_type"
        reply = v.request(
            "bateria",
            {
                "id_veiculo": "CARX",
                "nivel_bateria": 150,
                "localizacao": {"latitude": 1, "longitude": 2},
            },
        )
        assert reply["data"]["code"] == "invalid" and "nivel_bateria" in reply["data"]["field"]
        reply = v.request("reserva", {"id_veiculo": "CARX"})
        assert reply["data"]["code"] == "invalid" and reply["data"]["field"].endswith(
            "id_ponto_recarga"
        )


# --- identity ----------------------------------------------------------------------------------


def test_forbidden_other_vehicle_on_bound_connection(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    with vehicle(ports.vehicle) as v:
        assert v.request("custos", {"id_veiculo": "CARA"})["type"] == "extrato"
        reply = v.request("custos", {"id_veiculo": "CARB"}, id=9)
        assert reply["type"] == "erro" and reply["id"] == 9
        assert reply["data"]["code"] == "forbidden"
        # still bound to CARA; requests with no id act as CARA
        assert v.request("custos", {})["data"]["vehicle_id"] == "CARA"


def test_no_vehicle_id_acts_as_car_port(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    with vehicle(ports.vehicle) as v:
        reply = v.request("custos", {})
        assert reply["data"]["vehicle_id"] == f"CAR{v.local_port}"
        assert reply["data"]["moeda"] == "BRL"
        reply = v.request("custos", {"id_veiculo": "CAR1"})
        assert reply["data"]["code"] == "forbidden"


# --- each request -----------------------------------------------------------------------------


def test_reservation_codes(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    online_point(ports, "CP01")
    online_point(ports, "CP02")
    with vehicle(ports.vehicle) as a, vehicle(ports.vehicle) as b:
        assert reserve(a, "CARA", "NOPE")["data"]["code"] == "unknown_point"
        assert reserve(a, "CARA")["data"]["code"] == "reserved"
        reply = reserve(a, "CARA")
        assert reply["data"] == {
            **reply["data"],
            "status": "error",
            "code": "already_queued",
            "message": "Vehicle already in queue",
        }
        assert reserve(a, "CARA", "CP02")["data"]["code"] == "already_reserved"
        assert reserve(b, "CARB", tempo_estimado=300)["data"]["code"] == "invalid"
        status = a.request("status", {"id_veiculo": "CARA"})
        assert status["type"] == "status_veiculo"
        assert status["data"]["reserva"] is not None and status["data"]["sessao"] is None
        reply = a.request("cancelar", {"id_veiculo": "CARA", "id_ponto_recarga": "CP01"})
        assert reply["type"] == "cancelar_response" and reply["data"]["code"] == "cancelled"
        reply = a.request("cancelar", {"id_veiculo": "CARA", "id_ponto_recarga": "CP01"})
        assert reply["data"]["code"] == "no_reservation" and reply["data"]["status"] == "error"
        reply = a.request("parar", {"id_veiculo": "CARA", "id_ponto_recarga": "CP01"})
        assert reply["type"] == "parar_response" and reply["data"]["code"] == "no_session"
        assert a.request("status", {"id_veiculo": "CARA"})["data"]["reserva"] is None


def test_queue_full_and_turn_push(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    online_point(ports)
    conns = [Vehicle(ports.vehicle) for _ in range(6)]
    try:
        codes = [reserve(v, f"CARQ{i}")["data"]["code"] for i, v in enumerate(conns)]
        assert codes == ["reserved"] * 5 + ["queue_full"]
        assert conns[0].recv_type("sua_vez")["data"]["id_ponto_recarga"] == "CP01"
        conns[0].request("cancelar", {"id_veiculo": "CARQ0", "id_ponto_recarga": "CP01"})
        push = conns[1].recv_type("sua_vez")
        assert "id" not in push and push["data"]["reservation_id"]
    finally:
        for v in conns:
            v.close()


def test_500_vehicles_race_for_last_slots(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    online_point(ports)
    with vehicle(ports.vehicle) as v:  # 2 of 5 slots taken
        assert reserve(v, "CAREARLY1")["data"]["code"] == "reserved"
    with vehicle(ports.vehicle) as v:
        assert reserve(v, "CAREARLY2")["data"]["code"] == "reserved"

    async def one(i: int, gate: asyncio.Event) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports.vehicle)
        try:
            await gate.wait()
            body = {
                "type": "reserva",
                "data": {"id_veiculo": f"RACE{i}", "id_ponto_recarga": "CP01"},
            }
            writer.write(json.dumps(body).encode())
            await writer.drain()
            while True:
                msg = json.loads(await asyncio.wait_for(reader.readline(), 20))
                if msg["type"] == "reserva_response":
                    return str(msg["data"]["code"])
        finally:
            writer.close()

    async def race() -> list[str]:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(one(i, gate)) for i in range(500)]
        await asyncio.sleep(0.5)
        gate.set()
        return await asyncio.gather(*tasks)

    with keepalive(ports.status, "CP01"):
        codes = asyncio.run(race())
    assert codes.count("reserved") == 3
    assert codes.count("queue_full") == 497


def test_in_order_replies_while_chegada_waits_then_unreachable(
    broker: tuple[Proc, BrokerPorts],
) -> None:
    _, ports = broker
    with (
        welcomed_station(ports) as st,
        keepalive(ports.status, "CP01"),
        vehicle(ports.vehicle) as v,
    ):
        assert reserve(v, "CARW")["data"]["code"] == "reserved"
        v.recv_type("sua_vez")
        t0 = time.monotonic()
        v.send(
            {
                "type": "chegada",
                "id": "c",
                "data": {
                    "id_veiculo": "CARW",
                    "id_ponto_recarga": "CP01",
                    "nivel_bateria": 10,
                    "nivel_carregar": 90,
                    "metodo_pagamento": "Cartão de crédito",
                },
            }
        )
        v.send({"type": "ping", "data": {}, "id": "p"})
        st.recv_type("start")  # ... and never ack it
        first = v.recv(timeout=8)
        second = v.recv(timeout=2)
        waited = time.monotonic() - t0
        assert (first["id"], second["id"]) == ("c", "p")
        assert first["data"]["code"] == "point_unreachable"
        assert 4.0 <= waited <= 7.5
        status = v.request("status", {"id_veiculo": "CARW"})
        assert status["data"]["reserva"] is not None  # the reservation is kept


def test_session_completion_billed_once(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    with welcomed_station(ports) as st, vehicle(ports.vehicle) as v:
        v.send(
            {
                "type": "chegada",
                "data": {
                    "id_veiculo": "CARBILL",
                    "id_ponto_recarga": "CP01",
                    "nivel_bateria": 20,
                    "nivel_carregar": 70,
                    "metodo_pagamento": "Pix",
                    "capacidade_kwh": 40,
                },
            }
        )
        start = st.recv_type("start")
        st.send({"type": "ack", "cmd_id": start["cmd_id"], "ok": True})
        reply = v.recv_type("chegada_response")
        assert reply["data"]["code"] == "started"
        session_id = reply["data"]["session_id"]
        complete = {
            "type": "session_complete",
            "session_id": session_id,
            "vehicle_id": "CARBILL",
            "energia_kwh": 20.0,
            "nivel_inicial": 20,
            "nivel_final": 70,
            "started_at": time.time() - 60,
            "ended_at": time.time(),
            "reason": "target_reached",
        }
        for _ in range(3):
            st.send(complete)
        assert st.recv_type("session_ack")["session_id"] == session_id
        cost = v.recv_type("custo_final")["data"]
        assert cost["session_id"] == session_id and cost["payment_method"] == "Pix"
        assert float(cost["cost"]) == pytest.approx(40.0)  # 20 kWh x 2.0 BRL
        end = v.recv_type("encerramento")["data"]
        assert end["energia_kwh"] == pytest.approx(20.0)
        st.send(complete)  # a late resend after the ack
        st.recv_type("session_ack")
        extrato = v.request("custos", {"id_veiculo": "CARBILL"})
        while extrato["type"] != "extrato":
            extrato = v.recv()
        assert len(extrato["data"]["sessoes"]) == 1
        assert float(extrato["data"]["total"]) == pytest.approx(40.0)


def test_hold_expiry_with_short_hold(tmp_path: Path) -> None:
    ports = broker_ports()
    proc = start_broker(ports, str(tmp_path / "b.db"), "--hold-minutes", "0.02")
    try:
        online_point(ports)
        with vehicle(ports.vehicle) as a, vehicle(ports.vehicle) as b:
            assert reserve(a, "CAREXP1")["data"]["code"] == "reserved"
            assert reserve(b, "CAREXP2")["data"]["code"] == "reserved"
            a.recv_type("sua_vez")
            t0 = time.monotonic()
            expired = a.recv_type("reserva_expirada", timeout=5)
            assert expired["data"]["id_ponto_recarga"] == "CP01"
            assert 0.8 <= time.monotonic() - t0 <= 4.0
            assert b.recv_type("sua_vez", timeout=5)["data"]["id_ponto_recarga"] == "CP01"
    finally:
        assert proc.stop() == 0


def test_pushes_go_to_the_most_recent_connection(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    online_point(ports)
    with (
        vehicle(ports.vehicle) as first,
        vehicle(ports.vehicle) as older,
        vehicle(ports.vehicle) as newer,
    ):
        assert reserve(first, "CARFIRST")["data"]["code"] == "reserved"
        token = older.request("registrar", {"id_veiculo": "CARTWO"})["data"]["token"]
        assert reserve(older, "CARTWO")["data"]["code"] == "reserved"
        auth = newer.request("autenticar", {"id_veiculo": "CARTWO", "token": token})
        assert auth["data"]["code"] == "authenticated"
        assert newer.request("custos", {"id_veiculo": "CARTWO"})["type"] == "extrato"
        first.request("cancelar", {"id_veiculo": "CARFIRST", "id_ponto_recarga": "CP01"})
        assert newer.recv_type("sua_vez")["data"]["id_ponto_recarga"] == "CP01"
        assert older.request("ping", {}) == {"type": "pong", "data": {}}
        assert not any(p["type"] == "sua_vez" for p in older.pushes)


def test_vanishing_clients_do_not_disturb_the_broker(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    online_point(ports)
    for i in range(30):
        s = socket.create_connection(("127.0.0.1", ports.vehicle), timeout=5)
        body = {"type": "reserva", "data": {"id_veiculo": f"GONE{i}", "id_ponto_recarga": "CP01"}}
        s.sendall(json.dumps(body).encode() + b'{"type":"bateria","data":{')  # half a request
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # reset, without reading anything
    with vehicle(ports.vehicle) as v:
        assert v.request("ping", {}, id=1) == {"type": "pong", "data": {}, "id": 1}
        points = v.request(
            "consulta", {"id_veiculo": "CARV", "localizacao": {"latitude": LAT, "longitude": LON}}
        )["data"]
        assert points[0]["queue_size"] <= 5
