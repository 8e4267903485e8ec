"""ev-broker serve, station status datagrams: outcomes counted, the broker undisturbed."""

from __future__ import annotations

import json
import socket

import pytest

from tests.e2e.test_broker_vehicles import LAT, LON, http_get, metric, vehicle, wait_for
from tests.support.procs import BrokerPorts, Proc

pytestmark = pytest.mark.e2e


def _outcome(text: str, outcome: str) -> float:
    return metric(text, f'evcharge_datagrams_total{{outcome="{outcome}"}}')


def test_datagram_outcomes_are_counted(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    base = {"id": "CPU1", "latitude": LAT, "longitude": LON, "available": True}
    sent = [
        # the original minimal form
        {**base, "queue_size": 0, "vehicle_id": "CAR1", "battery": 80},
        {**base, "boot_id": "b1", "seq": 1, "estado": "disponivel", "potencia_kw": 22.0},
        {**base, "boot_id": "b1", "seq": 1},  # duplicate
        {**base, "boot_id": "b1", "seq": 3},
        {**base, "boot_id": "b1", "seq": 2},  # reordered
        {**base, "boot_id": "b2", "seq": 1},  # a new boot starts over
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        target = ("127.0.0.1", ports.status)
        for body in sent:
            s.sendto(json.dumps(body).encode(), target)
        s.sendto(b"\x00garbage{", target)
        s.sendto(json.dumps({"id": "CPU2", "latitude": 200, "longitude": 0}).encode(), target)
        s.sendto(json.dumps({"latitude": 1, "longitude": 2}).encode(), target)
        s.sendto(b'{"id":"CPU3","pad":"' + b"x" * 9000 + b'"}', target)

    def counted() -> bool:
        text = http_get(ports.http, "/metrics")[1]
        total = sum(_outcome(text, o) for o in ("ok", "stale", "malformed", "invalid", "oversized"))
        return total >= 10

    wait_for(counted, what="every datagram counted")
    text = http_get(ports.http, "/metrics")[1]
    assert _outcome(text, "ok") == 4
    assert _outcome(text, "stale") == 2
    assert _outcome(text, "malformed") == 1
    assert _outcome(text, "invalid") == 2
    assert _outcome(text, "oversized") == 1
    # the valid ones registered the point, the broker still answers
    with vehicle(ports.vehicle) as v:
        reply = v.request(
            "consulta", {"id_veiculo": "CARU", "localizacao": {"latitude": LAT, "longitude": LON}}
        )
        assert [p["id"] for p in reply["data"]] == ["CPU1"]


def test_burst_of_datagrams_is_not_lost(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    n = 5000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(n):
            body = {
                "id": f"CPB{i % 50}",
                "latitude": LAT,
                "longitude": LON,
                "boot_id": "x",
                "seq": i,
            }
            s.sendto(json.dumps(body).encode(), ("127.0.0.1", ports.status))

    def all_counted() -> bool:
        return _outcome(http_get(ports.http, "/metrics")[1], "ok") >= n

    wait_for(all_counted, timeout=10, what=f"{n} datagrams ok")
