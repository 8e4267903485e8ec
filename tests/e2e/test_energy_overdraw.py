"""A station that draws more than its limit on a real broker: counted per site,
logged (throttled), held at 0 kW after 3 reports running, and told on the bus."""

from __future__ import annotations

import contextlib
import threading

import pytest

from tests.e2e.test_energy_sites import history
from tests.support.procs import BrokerPorts, Proc
from tests.support.raw_clients import FakeStation, Vehicle, http_get, metric, wait_for, zmq_ctx

pytestmark = pytest.mark.e2e


def test_an_overdrawing_station_is_held_at_zero_and_the_operator_told(
    broker: tuple[Proc, BrokerPorts],
) -> None:
    proc, ports = broker
    with zmq_ctx() as ctx, history(ports) as ask:
        station = FakeStation(ctx, ports.station, "OD1", status_port=ports.status)
        car = Vehicle(ports.vehicle, "CAROD1")
        with contextlib.closing(station), contextlib.closing(car):
            hello = {"type": "hello", "id": "OD1", "latitude": station.lat,
                     "longitude": station.lon, "potencia_kw": 50.0, "preco_kwh": 2.0,
                     "boot_id": "boot-1", "interval_s": 2.0, "limites": True}  # fmt: skip
            station.send(hello)
            station.expect("welcome")
            station.datagram()
            assert ask({"op": "set_site", "name": "od", "limit_kw": 10, "points": ["OD1"]})["ok"]
            reply: dict[str, object] = {}

            def arrive() -> None:  # answered once the station acks the start
                reply.update(
                    car.ask("chegada", id_ponto_recarga="OD1", nivel_bateria=20,
                            nivel_carregar=80, metodo_pagamento="Pix")["data"]
                )  # fmt: skip

            # the start goes out with its limit; acked, the session runs
            asked = threading.Thread(target=arrive)
            asked.start()
            start = station.recv_type("start")
            assert start["kw"] == 10.0
            station.ack(start)
            asked.join(timeout=30)
            assert reply.get("code") == "started", reply
            sid = start["session_id"]
            for _ in range(3):  # it draws 20 kW against its 10 kW limit
                station.datagram("carregando", session_id=sid, potencia_atual_kw=20.0)
            held = station.recv_type("limit")
            assert held["session_id"] == sid and held["kw"] == 0.0
            wait_for(
                lambda: any(
                    e["topic"] == "site.overdraw" and e["data"]["session_id"] == sid
                    for e in ask({"op": "since", "seq": 0})["events"]
                ),
                what="site.overdraw on the bus",
            )
            _, text = http_get(ports.http, "/metrics")
            assert metric(text, 'evcharge_site_overdraw_total{site="od"}') == 3
            assert metric(text, 'evcharge_rejected_total{edge="energy",reason="overdraw"}') == 3
            # logged once, the next two counted for a later line (one a second at most)
            line = proc.read_until("rejected on energy: overdraw", timeout=10)
            assert "OD1" in line
            with pytest.raises(TimeoutError):
                proc.read_until("rejected on energy: overdraw", timeout=0.5)
