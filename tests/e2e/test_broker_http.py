"""ev-broker serve, operators HTTP: /metrics in Prometheus text, /healthz, 404/405."""

from __future__ import annotations

import json
import socket

import pytest

from tests.e2e.test_broker_vehicles import http_get, metric, online_point, reserve, vehicle
from tests.support.procs import BrokerPorts, Proc

pytestmark = pytest.mark.e2e


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_healthz(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    status, body = http_get(ports.http, "/healthz")
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok" and health["last_seq"] >= 1


def test_metrics_count_requests_errors_events(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    online_point(ports)
    with vehicle(ports.vehicle) as v:
        assert reserve(v, "CARM")["data"]["code"] == "reserved"
        assert reserve(v, "CARM")["data"]["code"] == "already_queued"
        v.send(b"{oops\n")
        assert v.recv()["data"]["code"] == "bad_json"
        status, text = http_get(ports.http, "/metrics")
    assert status == 200
    assert metric(text, 'evcharge_requests_total{type="reserva",result="ok"}') == 1
    assert metric(text, 'evcharge_requests_total{type="reserva",result="already_queued"}') == 1
    assert metric(text, 'evcharge_errors_total{code="bad_json"}') == 1
    assert metric(text, 'evcharge_events_total{topic="broker.started"}') == 1
    assert metric(text, 'evcharge_events_total{topic="reservation.created"}') == 1
    assert metric(text, 'evcharge_events_total{topic="vehicle.connected"}') >= 1
    assert metric(text, "evcharge_last_event_seq") >= 3
    assert metric(text, "evcharge_vehicles_connected") >= 1
    assert "# TYPE evcharge_request_duration_seconds histogram" in text
    assert metric(text, 'evcharge_request_duration_seconds_count{type="reserva"}') == 2
    assert metric(text, "evcharge_points_known") >= 1
    assert metric(text, "evcharge_vehicles_queued") == 1


def test_one_name_one_type(broker: tuple[Proc, BrokerPorts]) -> None:
    """Prometheus naming: each name has one TYPE, counters end in _total, no mixed figures."""
    _, ports = broker
    online_point(ports)
    text = http_get(ports.http, "/metrics")[1]
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    assert len(types) == text.count("# TYPE ")
    for name, kind in types.items():
        assert name.startswith("evcharge_")
        assert name.endswith("_total") == (kind == "counter"), (name, kind)
    assert "evcharge_core{" not in text and "evcharge_zmq{" not in text
    for name in (
        "evcharge_energy_delivered_kwh_total", "evcharge_revenue_total",
        "evcharge_sessions_completed_total", "evcharge_sessions_active",
        "evcharge_vehicles_queued", "evcharge_points", "evcharge_zmq_messages_total",
    ):  # fmt: skip
        assert name in types, name


def test_unknown_path_and_method(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    assert http_get(ports.http, "/nothing")[0] == 404
    out = _raw(ports.http, b"POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405 ")
    out = _raw(ports.http, b"garbage\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")


def test_keep_alive_serves_several_requests(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    out = _raw(ports.http, req + req + b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 3
