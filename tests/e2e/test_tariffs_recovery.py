"""A tariffed session survives kill -9 while it is parked (charging ended, still
plugged in): after the restart the unplug bills it exactly once, with parking, and
another kill -9 and restart keep that one bill and its CDR byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from common.timeutil import parse_timestamp
from tests.e2e.test_broker_recovery import all_events
from tests.e2e.test_broker_vehicles import (
    keepalive,
    online_point,
    send_status,
    station,
    vehicle,
    wait_for,
    zmq_ctx,
)
from tests.support.procs import BrokerPorts, broker_ports, start_broker
from tests.support.raw_clients import history_request

pytestmark = pytest.mark.e2e

IDLE = {
    "id": "idle",
    "currency": "BRL",
    "elements": [
        {
            "price_components": [
                {"type": "ENERGY", "price": 2.00, "step_size": 1},
                {"type": "PARKING_TIME", "price": 36.00, "step_size": 1},
            ]
        }
    ],
}


def tariffs(ports: BrokerPorts, *args: str) -> None:
    out = subprocess.run(
        [
            sys.executable, "-m", "broker", "tariffs", *args, "--broker", "127.0.0.1",
            "--history-port", str(ports.history), *ports.cred_args("operator"),
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def bills(ports: BrokerPorts) -> list[dict[str, Any]]:
    with zmq_ctx() as ctx:
        events = all_events(ctx, ports.history)
    return [e["data"] for e in events if e["topic"] == "charging.completed"]


def heard_since(ports: BrokerPorts, since: float) -> bool:
    (point,) = history_request(ports, {"op": "snapshot"})["points"]
    return point["last_heard"] is not None and parse_timestamp(point["last_heard"]) >= since - 0.01


def test_kill9_while_parked_then_unplug_bills_once(tmp_path: Path) -> None:
    ports = broker_ports()
    db = str(tmp_path / "b.db")
    proc = start_broker(ports, db)
    try:
        (tmp_path / "idle.json").write_text(json.dumps(IDLE))
        tariffs(ports, "set", str(tmp_path / "idle.json"))
        tariffs(ports, "assign", "idle", "--points", "CP01")
        with zmq_ctx() as ctx, station(ctx, ports.station, "CP01") as st:
            st.hello()
            st.recv_type("welcome")
            online_point(ports)
            with keepalive(ports.status, "CP01"), vehicle(ports.vehicle) as v:
                data = {"id_veiculo": "CARK", "id_ponto_recarga": "CP01", "nivel_bateria": 10}
                data.update(nivel_carregar=50, metodo_pagamento="Pix", capacidade_kwh=40)
                v.send({"type": "chegada", "data": data})
                start_cmd = st.recv_type("start")
                st.send({"type": "ack", "cmd_id": start_cmd["cmd_id"], "ok": True})
                assert v.recv_type("chegada_response")["data"]["code"] == "started"
            # from now on the station says the vehicle is still plugged in (a datagram
            # without conector_livre would mean it left: docs/tariffs.md); datagrams
            # are read in order, so once this one is heard the keepalives are too
            sent = time.time()
            send_status(ports.status, "CP01", conector_livre=False)
            wait_for(lambda: heard_since(ports, sent), timeout=20, what="the plugged datagram")
            now = time.time()
            st.send(
                {
                    "type": "session_complete",
                    "session_id": start_cmd["session_id"],
                    "vehicle_id": "CARK",
                    "energia_kwh": 16.0,
                    "nivel_inicial": 10.0,
                    "nivel_final": 50.0,
                    "started_at": now - 1.0,
                    "ended_at": now,
                }
            )
            # an operator op answered after its commit: the completion (sent
            # long before) is committed too; the session is parked, not billed
            send_status(ports.status, "CP01", conector_livre=False)
            tariffs(ports, "set", str(tmp_path / "idle.json"))
            assert bills(ports) == []
        proc.kill9()
        proc.stop()

        proc = start_broker(ports, db)
        assert bills(ports) == []  # still parked after the restart
        send_status(ports.status, "CP01", conector_livre=True)
        wait_for(lambda: len(bills(ports)) > 0, timeout=20, what="the bill after the unplug")
        (bill,) = bills(ports)
        cdr = bill["cdr"]
        assert bill["session_id"] == start_cmd["session_id"] and cdr["tariff_id"] == "idle"
        assert cdr["total_energy"] == 16.0 and cdr["total_parking_time"] > 0
        kinds = [p["dimensions"][0]["type"] for p in cdr["charging_periods"]]
        assert kinds == ["ENERGY", "PARKING_TIME"]
        proc.kill9()
        proc.stop()

        proc = start_broker(ports, db)
        send_status(ports.status, "CP01", conector_livre=True)  # changes nothing now
        tariffs(ports, "set", str(tmp_path / "idle.json"))
        assert bills(ports) == [bill]
    finally:
        proc.stop()
