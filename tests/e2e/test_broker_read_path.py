"""The read path over real sockets: queries are answered without the store.

A polling vehicle whose battery is low makes ONE ``vehicle.low_battery`` event,
and after it every query (``bateria``, ``consulta``, ``status``, ``custos``,
``ping``) is answered without a store commit, in request order.
"""

from __future__ import annotations

import pytest

from tests.e2e.test_broker_vehicles import online_point
from tests.support.codec_samples import ORIGINAL
from tests.support.procs import BrokerPorts, Proc
from tests.support.raw_clients import http_get, metric, vehicle, wait_for

pytestmark = pytest.mark.e2e

COMMITS = "evcharge_store_commits_total"
LOW = 'evcharge_events_total{topic="vehicle.low_battery"}'


def _figures(ports: BrokerPorts) -> tuple[float, float]:
    status, text = http_get(ports.http, "/metrics")
    assert status == 200
    return metric(text, COMMITS), metric(text, LOW)


def test_polling_vehicle_makes_one_event_and_queries_never_commit(
    broker: tuple[Proc, BrokerPorts],
) -> None:
    _, ports = broker
    online_point(ports)
    with vehicle(ports.vehicle) as v:
        v.send(ORIGINAL[0])  # the original client's bateria: level 15, no newline
        assert v.recv()["data"]["pontos"][0]["id"] == "CP01"
        wait_for(lambda: _figures(ports)[1] == 1, what="one vehicle.low_battery event")
        commits, _ = _figures(ports)
        loc = {"latitude": -12.266, "longitude": -38.966}
        asks = [
            ("bateria", {"nivel_bateria": 15, "localizacao": loc}, "pontos_disponiveis"),
            ("consulta", {"localizacao": loc}, "lista_pontos"),
            ("status", {}, "status_veiculo"),
            ("custos", {}, "extrato"),
            ("ping", {}, "pong"),
            ("reserva", {"id_ponto_recarga": "NOPE"}, "reserva_response"),  # a refusal
        ]
        for round_ in range(20):
            for i, (kind, data, _) in enumerate(asks):
                v.send({"type": kind, "data": {"id_veiculo": "CAR40312", **data}, "id": i})
            for i, (_, _, reply_type) in enumerate(asks):
                reply = v.recv()
                assert (reply["type"], reply["id"]) == (reply_type, i), round_
        assert _figures(ports) == (commits, 1)
        # back above the re-arm level, then low again: one more event
        for level in (30, 12, 11):
            body = {"id_veiculo": "CAR40312", "nivel_bateria": level, "localizacao": loc}
            v.send({"type": "bateria", "data": body})
            assert v.recv()["type"] == "pontos_disponiveis"
        wait_for(lambda: _figures(ports)[1] == 2, what="a second vehicle.low_battery event")
