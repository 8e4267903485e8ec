"""The gateway service: ``--scale gateway=3`` and a broker (core) restart during trips.

Vehicles connect to ``gateway:8081`` (every replica behind one name). While one
is charging and others wait in queues, the broker container is killed and
started again: every request the vehicles sent meanwhile is answered (held by
their gateway, not refused), their connections stay open, and the session that
was charging is billed after the restart.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.compose.conftest import Background, Stack, running_stack

pytestmark = [pytest.mark.compose, pytest.mark.slow]

# Three vehicles on one gateway connection each: V0 reserves and arrives at POINT,
# the others queue behind it; then every 0.3 s each asks ``status`` until DURATION
# is over. Prints every line received as JSON with the vehicle and the time.
TRIPS = """
import json, socket, sys, time
point, duration = sys.argv[1], float(sys.argv[2])
socks = []
for i in range(3):
    s = socket.create_connection(("gateway", 8081), timeout=60)
    socks.append((f"GWV{i}", s, [b""]))
def send(vid, s, rid, kind, data):
    body = {"type": kind, "data": {"id_veiculo": vid, **data}, "id": rid}
    s.sendall(json.dumps(body).encode() + b"\\n")
def drain(vid, s, buf, until_id=None):
    while True:
        while b"\\n" in buf[0]:
            line, buf[0] = buf[0].split(b"\\n", 1)
            msg = json.loads(line)
            print(json.dumps({"vid": vid, "t": time.time(), "msg": msg}), flush=True)
            if until_id is None or msg.get("id") == until_id:
                return msg
        chunk = s.recv(65536)
        if not chunk:
            print(json.dumps({"vid": vid, "closed": True}), flush=True)
            sys.exit(1)
        buf[0] += chunk
for i, (vid, s, buf) in enumerate(socks):
    send(vid, s, 1, "reserva", {"id_ponto_recarga": point})
    drain(vid, s, buf, 1)
vid, s, buf = socks[0]
arrive = {"id_ponto_recarga": point, "nivel_bateria": 20, "nivel_carregar": 40,
          "metodo_pagamento": "Pix"}
send(vid, s, 2, "chegada", arrive)
drain(vid, s, buf, 2)
print("charging", flush=True)
rid, end = 10, time.monotonic() + duration
while time.monotonic() < end:
    rid += 1
    for vid, s, buf in socks:
        send(vid, s, rid, "status", {})
        drain(vid, s, buf, rid)
    time.sleep(0.3)
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def stack(image: str) -> Any:
    with running_stack(
        image,
        ("broker", "fleet", "gateway", "billing"),
        EV_PUBLISH_GATEWAY="0",
        EV_CORE_WAIT="90",
        EV_SPEED="10",
    ) as s:
        s.compose("up", "-d", "--scale", "gateway=3", "gateway", timeout=240)
        yield s


def _gateways_healthy(stack: Stack, timeout: float = 90) -> list[str]:
    deadline = time.monotonic() + timeout
    ids: list[str] = []
    while time.monotonic() < deadline:
        ids = stack.compose("ps", "-q", "gateway").stdout.split()
        fmt = "{{.State.Health.Status}}"
        states = [stack.docker("inspect", "--format", fmt, cid).strip() for cid in ids]
        if len(ids) == 3 and all(s == "healthy" for s in states):
            return ids
        time.sleep(1)
    raise AssertionError(f"gateways not healthy: {ids}\n{stack.logs('gateway')}")


def test_three_gateways_keep_vehicles_through_a_broker_restart(stack: Stack) -> None:
    _gateways_healthy(stack)
    point = "FS1-0001"
    stack.wait_point(point, lambda p: p["estado"] == "disponivel", 60, "free")
    trips = Background(["docker", "exec", stack.probe_name, "python3", "-c", TRIPS, point, "40"])
    try:
        trips.wait_for(lambda line: line == "charging", 60)
        time.sleep(1)
        stack.docker("kill", "--signal", "KILL", stack.container("broker"))
        killed = time.time()
        time.sleep(2)  # vehicles keep asking while the broker is gone
        stack.compose("start", "broker", timeout=120)
        stack.wait_healthy("broker", 120)
        assert trips.wait(120) == 0, trips.text()
    finally:
        trips.stop()
    replies = [json.loads(line) for line in trips.lines if line.startswith("{")]
    assert not [r for r in replies if r.get("closed")], trips.text()
    msgs = [(r["vid"], r["t"], r["msg"]) for r in replies]
    started = [m for _, _, m in msgs if m.get("id") == 2]
    assert started and started[0]["data"]["code"] == "started", started
    session = started[0]["data"]["session_id"]
    held = [m for _, t, m in msgs if t > killed + 1 and m.get("type") == "status_veiculo"]
    assert held, "no request answered after the broker came back"
    assert not [m for _, _, m in msgs if m.get("type") == "erro"], msgs
    per_id: dict[tuple[str, int], int] = {}
    for vid, _, m in msgs:
        if "id" in m:
            per_id[(vid, m["id"])] = per_id.get((vid, m["id"]), 0) + 1
    assert set(per_id.values()) == {1}, "a request answered twice"
    # the session that was charging through the restart is billed
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        bills = [e for e in stack.history() if e["topic"] == "charging.completed"]
        if any(b["data"]["session_id"] == session for b in bills):
            return
        time.sleep(2)
    raise AssertionError(f"session {session} never billed")
