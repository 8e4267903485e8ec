"""ev-broker serve, durability: kill -9 and restart, refused databases, clean stop."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from tests.e2e.test_broker_vehicles import (
    LAT,
    LON,
    keepalive,
    online_point,
    reserve,
    send_status,
    station,
    vehicle,
    wait_for,
    zmq_ctx,
)
from tests.support.credentials import curve_client_for
from tests.support.procs import (
    BROKER_READY,
    BrokerPorts,
    Proc,
    broker_ports,
    start,
    start_broker,
)
from tests.support.raw_clients import history_request

pytestmark = pytest.mark.e2e


def history(ctx: zmq.Context[zmq.Socket[bytes]], port: int, request: dict[str, Any]) -> Any:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    curve_client_for(sock, port)
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send(msgpack.packb(request))
        assert sock.poll(5000), "history server did not answer"
        return msgpack.unpackb(sock.recv())
    finally:
        sock.close(linger=0)


def all_events(ctx: zmq.Context[zmq.Socket[bytes]], port: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    seq = 0
    while True:
        page = history(ctx, port, {"op": "since", "seq": seq, "limit": 1000})
        events.extend(page["events"])
        if not page["more"]:
            return events
        seq = page["events"][-1]["seq"]


def failed_start(ports: BrokerPorts, db: str) -> tuple[int, str]:
    proc = start(["python", "-m", "broker", "serve", *ports.cli_args(), "--db", db])
    try:
        rc = proc.popen.wait(timeout=20)
        out = proc.drain()
    finally:
        proc.stop()
    return rc, out


def test_kill9_and_restart_keeps_everything(tmp_path: Path) -> None:
    ports = broker_ports()
    db = str(tmp_path / "b.db")
    proc = start_broker(ports, db)
    try:
        with zmq_ctx() as ctx, station(ctx, ports.station, "CP01") as st:
            st.hello()
            st.recv_type("welcome")
            online_point(ports)
            with keepalive(ports.status, "CP01"), vehicle(ports.vehicle) as v:
                v.send(
                    {
                        "type": "chegada",
                        "data": {
                            "id_veiculo": "CARS",
                            "id_ponto_recarga": "CP01",
                            "nivel_bateria": 10,
                            "nivel_carregar": 50,
                            "metodo_pagamento": "Pix",
                        },
                    }
                )
                start_cmd = st.recv_type("start")
                st.send({"type": "ack", "cmd_id": start_cmd["cmd_id"], "ok": True})
                assert v.recv_type("chegada_response")["data"]["code"] == "started"
            with vehicle(ports.vehicle) as v:
                reply = reserve(v, "CARR", tempo_estimado=30)
                assert reply["data"]["code"] == "reserved"
                reservation_id = reply["data"]["reservation_id"]
            before = all_events(ctx, ports.history)
        proc.kill9()
        proc.stop()  # reaps it and closes its output pipe

        proc = start_broker(ports, db)
        with zmq_ctx() as ctx:
            after = all_events(ctx, ports.history)
        seqs = [e["seq"] for e in after]
        assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate
        assert after[: len(before)] == before
        assert [e["topic"] for e in after].count("broker.started") == 2
        # kept: the reservation and the session (read as the operator does: a new vehicle
        # connection may not read an unregistered id's history)
        snap = history_request(ports, {"op": "snapshot"})
        assert reservation_id in str(snap["queues"])
        assert "CARS" in str(snap["sessions"])
        with vehicle(ports.vehicle) as v:
            points = v.request(
                "consulta",
                {"id_veiculo": "CARQ", "localizacao": {"latitude": LAT, "longitude": LON}},
            )["data"]
            assert [(p["id"], p["estado"]) for p in points] == [("CP01", "offline")]
            send_status(ports.status, "CP01", estado="carregando")

            def back_online() -> bool:
                pts = v.request(
                    "consulta",
                    {"id_veiculo": "CARQ", "localizacao": {"latitude": LAT, "longitude": LON}},
                )["data"]
                return bool(pts[0]["estado"] != "offline")

            wait_for(back_online, what="CP01 online again")
    finally:
        proc.stop()


def test_sigterm_exits_zero_within_two_seconds(broker: tuple[Proc, BrokerPorts]) -> None:
    proc, ports = broker
    online_point(ports)
    with vehicle(ports.vehicle) as v:
        assert reserve(v, "CART")["data"]["code"] == "reserved"
        t0 = time.monotonic()
        proc.signal(signal.SIGTERM)
        rc = proc.popen.wait(timeout=5)
        assert rc == 0
        assert time.monotonic() - t0 < 2.0


def test_sigint_exits_zero(tmp_path: Path) -> None:
    ports = broker_ports()
    proc = start_broker(ports, ":memory:")
    try:
        proc.signal(signal.SIGINT)
        assert proc.popen.wait(timeout=5) == 0
        assert "Traceback" not in proc.drain()
    finally:
        proc.stop()


def test_corrupt_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    db.write_bytes(b"definitely not sqlite " * 500)
    rc, out = failed_start(broker_ports(), str(db))
    assert rc != 0
    assert "cannot be used" in out and "Traceback" not in out


def test_database_locked_by_running_broker_is_refused(
    broker: tuple[Proc, BrokerPorts], tmp_path: Path
) -> None:
    rc, out = failed_start(broker_ports(), str(tmp_path / "broker.db"))
    assert rc != 0
    assert "in use by another running broker" in out and "Traceback" not in out


def test_bad_option_values_exit_2(tmp_path: Path) -> None:
    for args in (
        ["--vehicle-port", "abc"],
        ["--hold-minutes", "-1"],
        ["--log-format", "xml"],
        ["--queue-capacity", "0"],
        ["--ack-timeout", "0"],
        ["--heartbeat", "nan"],
        ["--low-battery", "101"],
    ):
        proc = start(["python", "-m", "broker", "serve", "--db", ":memory:", *args])
        try:
            rc = proc.popen.wait(timeout=20)
            out = proc.drain()
        finally:
            proc.stop()
        assert rc == 2, (args, out)
        assert "invalid value for --" in out and len(out.strip().splitlines()) == 1, out


def test_options_from_environment(tmp_path: Path) -> None:
    ports = broker_ports()
    env = {
        "EV_VEHICLE_PORT": str(ports.vehicle),
        "EV_DB": ":memory:",
        "EV_HOLD_MINUTES": "0.5",
        "EV_LOG_FORMAT": "json",
        "EV_KEYS": str(tmp_path),
    }
    args = [a for a in ports.cli_args()]
    i = args.index("--vehicle-port")
    del args[i : i + 2]
    proc = start(["python", "-m", "broker", "serve", *args], env=env)
    try:
        proc.read_until(BROKER_READY, timeout=20)
        with vehicle(ports.vehicle) as v:
            assert v.request("ping", {})["type"] == "pong"
        logs = [json.loads(line) for line in proc.lines if line.startswith("{")]
        assert logs and all({"ts", "level", "logger", "msg"} <= set(entry) for entry in logs)
    finally:
        assert proc.stop() == 0
