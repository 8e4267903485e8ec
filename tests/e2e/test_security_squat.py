"""A station key cannot squat another point's id on 5555 (security contract, second round).

The attacker holds a valid ``station`` credential for ``OTH*`` and connects with the
routing id ``SEC01`` while the real SEC01 is away. It never receives anything for
SEC01, and the real station (a fresh routing id, as ``ev-station`` uses) is welcomed
at once and charges and bills as before, the squatter still connected.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import zmq

from station.links import routing_id
from tests.e2e.test_security_attacks import (  # noqa: F401 (the fixture)
    Scene,
    completion,
    raw_dealer,
    scene,
)
from tests.support.raw_clients import LAT, LON, FakeStation, Vehicle, wait_for


def drain(sock: zmq.Socket[bytes], seconds: float) -> list[dict[str, Any]]:
    """Every message ``sock`` receives within ``seconds``."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            got.append(msgpack.unpackb(sock.recv()))
    return got


def hello(point_id: str) -> dict[str, Any]:
    return {"type": "hello", "id": point_id, "latitude": LAT, "longitude": LON,
            "potencia_kw": 50.0, "preco_kwh": 1.5, "boot_id": "evil"}  # fmt: skip


def test_a_squatter_gets_nothing_and_never_keeps_the_real_station_out(
    scene: Scene,  # noqa: F811 (the fixture)
) -> None:
    real = scene.station("SEC01", scene.real)
    real.greet()
    real.datagram()
    wait_for(lambda: "SEC01" in scene.points(), what="SEC01 registered")
    real.close()  # the real station is away (its connection goes within the ZMTP timeout)
    time.sleep(5)
    squatter = raw_dealer(scene, "SEC01", scene.other)
    car = Vehicle(scene.ports.vehicle, "DRIVER1")
    try:
        squatter.send(msgpack.packb(hello("SEC01")))  # not covered: refused
        squatter.send(msgpack.packb({"type": "heartbeat"}))  # the first protocol's form
        squatter.send(msgpack.packb(hello("OTH9")))  # its own point, on the same connection
        wait_for(lambda: scene.rejected("stations", "point_not_covered") >= 2, what="refusals")
        reply = car.ask("reserva", id_ponto_recarga="SEC01", tempo_estimado=10)
        assert reply["type"] == "reserva_response", reply
        seen = drain(squatter, 2.0)
        for msg in seen:  # at most its own point's welcome and heartbeats
            assert msg["type"] in ("welcome", "heartbeat"), seen
            assert msg.get("id") in (None, "OTH9"), seen
        assert "DRIVER1" not in repr(seen)
        # the real station comes back with a fresh routing id, the squatter still there
        t0 = time.monotonic()
        back = FakeStation(
            scene.ctx, scene.ports.station, "SEC01", status_port=scene.ports.status,
            lat=LAT, lon=LON, price_kwh=1.5, credential=scene.real,
            routing_id=routing_id("SEC01"),
        )  # fmt: skip
        try:
            welcome = back.greet()
            assert time.monotonic() - t0 < 10
            assert welcome["id"] == "SEC01"  # a routing id that is not the point id
            back.datagram()
            car.ask("cancelar", id_ponto_recarga="SEC01")
            arrive = {
                "id_veiculo": "DRIVER1", "id_ponto_recarga": "SEC01", "nivel_bateria": 20,
                "nivel_carregar": 80, "metodo_pagamento": "Pix", "capacidade_kwh": 60,
            }  # fmt: skip
            car.send({"type": "chegada", "id": "arrive", "data": arrive})
            start = back.recv_type("start")
            assert start["id"] == "SEC01" and start["vehicle_id"] == "DRIVER1"
            back.ack(start)
            assert car.reply()["data"]["code"] == "started"
            back.send(completion(str(start["session_id"]), "DRIVER1"))
            assert back.expect("session_ack")["session_id"] == start["session_id"]
            bill = car.push("custo_final")["data"]
            assert float(bill["cost"]) == 54.0
            assert "DRIVER1" not in repr(drain(squatter, 0.5))
        finally:
            back.close()
    finally:
        car.close()
        squatter.close(linger=0)
