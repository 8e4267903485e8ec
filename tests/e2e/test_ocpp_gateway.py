"""`ev-station ocpp` between simulated OCPP 1.6J chargers and a real `ev-broker serve`.

The chargers are the ``ocpp`` package's own ChargePoint class over real WebSockets
(tests/support/ocpp_sims.py); the vehicle is the raw TCP JSON client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.test_broker_availability import history
from tests.support.ocpp_sims import PASSWORD, SimLoop, sim_loop, write_chargers
from tests.support.procs import (
    BrokerPorts,
    Proc,
    free_port,
    running,
    start,
    start_broker,
    start_broker_on_free_ports,
)
from tests.support.raw_clients import Vehicle, http_get, kept_accounts, metric, wait_for

pytestmark = pytest.mark.e2e

LAT, LON = -12.2664, -38.9663
PRICE = 2.0


def gateway_args(
    ports: BrokerPorts, chargers: Path, ws_port: int, *extra: str, level: str = "info"
) -> list[str]:
    return [
        "python", "-m", "station", "ocpp", "--chargers", str(chargers),
        "--host", "127.0.0.1", "--port", str(ws_port), "--interval", "0.5",
        "--status-port", str(ports.status), "--station-port", str(ports.station),
        "--vehicle-port", str(ports.vehicle), "--log-level", level,
        *ports.cred_args("station"), *extra,
    ]  # fmt: skip


#: The simulated chargers run up to 5000 times faster than real time (speed), so the
#: broker's bound on metered energy (power x wall time) is scaled for them, with room.
BROKER_OPTS = ("--offline-after", "1.5", "--offline-grace", "3", "--metered-time-scale", "10000")


@pytest.fixture
def broker(tmp_path: Path, ports: BrokerPorts) -> Iterator[tuple[Proc, BrokerPorts]]:
    """The shared broker fixture's broker, told that metered chargers run fast."""
    proc = start_broker_on_free_ports(ports, str(tmp_path / "broker.db"), *BROKER_OPTS)
    try:
        yield proc, ports
    finally:
        proc.stop()


@pytest.fixture
def chargers(tmp_path: Path) -> Path:
    return write_chargers(tmp_path / "chargers.toml", ["OC01", "OC02"], price_kwh=PRICE)


@pytest.fixture
def gateway(broker: tuple[Proc, BrokerPorts], chargers: Path) -> Iterator[tuple[Proc, str]]:
    ws_port = free_port()
    with running(gateway_args(broker[1], chargers, ws_port), ready="ocpp gateway ready") as proc:
        yield proc, f"ws://127.0.0.1:{ws_port}/ocpp"


@pytest.fixture
def sims() -> Iterator[SimLoop]:
    with sim_loop() as loop:
        yield loop


@pytest.fixture
def car(broker: tuple[Proc, BrokerPorts]) -> Iterator[Vehicle]:
    c = Vehicle(broker[1].vehicle, "CAROCPP1")
    try:
        yield c
    finally:
        c.close()


def points(car: Vehicle) -> dict[str, dict[str, Any]]:
    reply = car.ask("consulta", localizacao={"latitude": LAT, "longitude": LON})
    return {p["id"]: p for p in reply["data"]}


def wait_estado(car: Vehicle, point_id: str, estado: str, timeout: float = 15.0) -> None:
    wait_for(
        lambda: points(car).get(point_id, {}).get("estado") == estado,
        timeout=timeout,
        what=f"{point_id} {estado}",
        interval=0.1,
    )


def arrive(car: Vehicle, point_id: str = "OC01", **extra: Any) -> dict[str, Any]:
    data = {
        "id_ponto_recarga": point_id,
        "nivel_bateria": 20,
        "nivel_carregar": 80,
        "metodo_pagamento": "Pix",
        "capacidade_kwh": 60,
        **extra,
    }
    return car.ask("chegada", **data)["data"]


def test_boot_reserve_charge_and_bill_from_the_meter(
    gateway: tuple[Proc, str], sims: SimLoop, car: Vehicle
) -> None:
    _, url = gateway
    sim = sims.add(url, "OC01", speed=1000, meter_every_s=0.1)
    wait_estado(car, "OC01", "disponivel")
    assert "OC02" not in points(car)  # a charger that never connected is no point yet
    p = points(car)["OC01"]
    assert p["preco_kwh"] == PRICE and p["potencia_kw"] == 22.0

    # the gateway configured periodic meter values at boot
    assert sim.configuration == {
        "MeterValueSampleInterval": "10",
        "MeterValuesSampledData": "Energy.Active.Import.Register",
    }
    reply = car.ask("reserva", id_ponto_recarga="OC01", tempo_estimado=5)
    assert reply["data"]["code"] == "reserved", reply  # after the charger accepted ReserveNow
    ocpp_reservation = next(r[1] for r in sim.received if r[0] == "ReserveNow")
    assert isinstance(ocpp_reservation, int)
    assert car.push("sua_vez", timeout=5)["data"]["id_ponto_recarga"] == "OC01"

    started = arrive(car)
    assert started["code"] == "started", started
    assert ("RemoteStartTransaction", "CAROCPP1") in sim.received
    # one ReserveNow per reservation, whatever hellos crossed the turn
    assert [r[0] for r in sim.received].count("ReserveNow") == 1
    bill = car.push("custo_final", timeout=30)["data"]
    # the charger stopped at the vehicle's target (36 kWh) when the gateway asked it to
    assert any(r[0] == "RemoteStopTransaction" for r in sim.received)
    assert len(sim.completed) == 1
    metered_kwh = sim.completed[0]["meter_stop"] / 1000.0  # meterStart was 0
    assert metered_kwh >= 36.0
    assert bill["energia_kwh"] == pytest.approx(metered_kwh, abs=1e-9)
    assert bill["cost"] == pytest.approx(round(metered_kwh * PRICE, 2), abs=1e-9)
    assert bill["session_id"] == started["session_id"]
    assert bill["nivel_inicial"] == 20
    end = car.push("encerramento", timeout=5)["data"]
    assert end["energia_kwh"] == bill["energia_kwh"]
    statement = car.ask("custos")["data"]
    assert statement["total"] == bill["cost"]
    wait_estado(car, "OC01", "disponivel")


@pytest.mark.parametrize(
    ("answer", "code"), [("Rejected", "point_unavailable"), ("Occupied", "point_busy")]
)
def test_a_reservation_the_charger_refuses_is_refused_and_nothing_is_held(
    broker: tuple[Proc, BrokerPorts],
    gateway: tuple[Proc, str],
    sims: SimLoop,
    car: Vehicle,
    answer: str,
    code: str,
) -> None:
    _, url = gateway
    sim = sims.add(url, "OC02", reserve_answer=answer)
    wait_estado(car, "OC02", "disponivel")
    reply = car.ask("reserva", id_ponto_recarga="OC02", tempo_estimado=5)["data"]
    assert (reply["status"], reply["code"]) == ("error", code), reply
    assert [r[0] for r in sim.received].count("ReserveNow") == 1
    assert car.ask("status")["data"]["reserva"] is None
    assert points(car)["OC02"]["queue_size"] == 0
    other = Vehicle(broker[1].vehicle, "CAROCPP2")  # nothing held: another driver may come
    try:
        assert arrive(other, "OC02")["code"] == "started"
    finally:
        other.close()


def _raw_exchange(url: str, frames: list[str]) -> tuple[list[Any], int | None]:
    """Send ``frames`` on an authenticated raw OCPP-J connection: the answers read (one
    per frame until the gateway closes) and the close code (None: still open)."""

    async def run() -> tuple[list[Any], int | None]:
        auth = base64.b64encode(f"OC01:{PASSWORD}".encode()).decode()
        answers: list[Any] = []
        async with connect(
            f"{url}/OC01",
            # (ignored below) websockets types subprotocols as Subprotocol (a NewType of str)
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Basic {auth}"},
            open_timeout=10,
        ) as ws:
            try:
                for frame in frames:
                    await ws.send(frame)
                    answers.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            except ConnectionClosed:
                return answers, ws.close_code
        return answers, None

    return asyncio.run(run())


def test_invalid_frames_get_call_errors_or_a_close_and_no_traceback(
    gateway: tuple[Proc, str],
) -> None:
    proc, url = gateway
    answers, closed = _raw_exchange(
        url,
        [
            '[2,"m1","Heartbeat"]',  # a Call without its payload
            '[2,"m2","Heartbeat",{},"extra"]',
            '[2,"m3","Heartbeat",{"unexpected":1}]',  # against the schema
            '[2,"m4","NoSuchAction",{}]',
            '[7,"m5","Heartbeat",{}]',  # unknown MessageTypeId
            '[2,"m6","Heartbeat",{}]',  # still served
        ],
    )
    assert closed is None
    assert [(a[0], a[1]) for a in answers[:5]] == [(4, f"m{n}") for n in range(1, 6)]
    assert [a[2] for a in answers[:5]] == [
        "FormationViolation", "FormationViolation", "FormationViolation",
        "NotSupported", "NotSupported",
    ]  # fmt: skip
    assert answers[5][:2] == [3, "m6"] and "currentTime" in answers[5][2]
    for frame in ("not json", '{"a":1}', "[2]", '[2, 17, "Heartbeat", {}]'):
        answers, closed = _raw_exchange(url, [frame])
        assert (answers, closed) == ([], 1002), frame
    proc.stop()
    assert "Traceback" not in "\n".join(proc.lines)


def test_out_of_service_from_the_console_makes_the_connector_inoperative(
    broker: tuple[Proc, BrokerPorts], gateway: tuple[Proc, str], sims: SimLoop, car: Vehicle
) -> None:
    _, url = gateway
    sim = sims.add(url, "OC01")
    wait_estado(car, "OC01", "disponivel")
    with history(broker[1]) as ask:
        req = {"op": "set_availability", "point_id": "OC01", "available": False, "reason": "x"}
        assert ask(req)["ok"] is True
        wait_for(lambda: ("ChangeAvailability", "Inoperative") in sim.received, what="Inoperative")
        assert ask({**req, "available": True})["ok"] is True
        wait_for(lambda: ("ChangeAvailability", "Operative") in sim.received, what="Operative")
    wait_estado(car, "OC01", "disponivel")


def test_a_rejected_remote_start_is_point_unreachable(
    gateway: tuple[Proc, str], sims: SimLoop, car: Vehicle
) -> None:
    _, url = gateway
    sim = sims.add(url, "OC02", reject_starts=True)
    wait_estado(car, "OC02", "disponivel")
    reply = arrive(car, "OC02")
    assert reply["code"] == "point_unreachable", reply
    assert ("RemoteStartTransaction", "CAROCPP1") in sim.received
    assert sim.transaction is None


def connect_status(url: str, user: str, password: str, protocols: list[str]) -> int | None:
    """HTTP status of a refused upgrade, or None when the WebSocket opened."""

    async def attempt() -> int | None:
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        try:
            async with connect(
                f"{url}/{user}",
                # (ignored below) websockets types subprotocols as Subprotocol (a NewType of str)
                subprotocols=protocols,  # type: ignore[arg-type]
                additional_headers={"Authorization": f"Basic {auth}"},
                open_timeout=10,
            ):
                return None
        except InvalidStatus as exc:
            return int(exc.response.status_code)

    return asyncio.run(attempt())


def test_wrong_password_and_unknown_id_get_401_before_the_upgrade(
    gateway: tuple[Proc, str],
) -> None:
    _, url = gateway
    assert connect_status(url, "OC01", "wrong-password-0123456789", ["ocpp1.6"]) == 401
    assert connect_status(url, "NOPE", PASSWORD, ["ocpp1.6"]) == 401
    assert connect_status(url, "OC01", PASSWORD, ["ocpp2.0"]) == 400  # not one of ours
    assert connect_status(url, "OC01", PASSWORD, ["ocpp1.6"]) is None


def test_a_charger_that_disconnects_mid_session_is_offline_then_billed_by_the_grace_rule(
    gateway: tuple[Proc, str], sims: SimLoop, car: Vehicle
) -> None:
    _, url = gateway
    sim = sims.add(url, "OC01", speed=10, meter_every_s=0.1, reconnect=False)
    wait_estado(car, "OC01", "disponivel")
    assert arrive(car)["code"] == "started"
    wait_for(lambda: sim.meter_wh > 100, what="some energy metered")
    sims.run(sim.close())  # the charger is gone (not a clean stop: no StopTransaction)
    wait_estado(car, "OC01", "offline")
    # the broker's grace (3 s in these tests) ends the session as a fault, billed for the
    # energy the gateway last reported from MeterValues
    bill = car.push("custo_final", timeout=30)["data"]
    assert 0 < bill["energia_kwh"] <= sim.meter_wh / 1000.0 + 1e-9
    assert bill["cost"] == pytest.approx(round(bill["energia_kwh"] * PRICE, 2), abs=1e-9)


def test_gateway_kill9_and_restart_keeps_the_session_and_bills_the_meter(
    tmp_path: Path, ports: BrokerPorts, chargers: Path, sims: SimLoop
) -> None:
    # a grace period long enough for the gateway to come back on a loaded machine
    broker = start_broker(ports, str(tmp_path / "b.db"), "--offline-after", "1.5",
                          "--offline-grace", "60", *BROKER_OPTS[-2:])  # fmt: skip
    ws_port = free_port()
    gw = start(gateway_args(ports, chargers, ws_port))
    car = Vehicle(ports.vehicle, "CAROCPP1")
    try:
        gw.read_until("ocpp gateway ready", timeout=20)
        sim = sims.add(f"ws://127.0.0.1:{ws_port}/ocpp", "OC01", speed=10, meter_every_s=0.1)
        wait_estado(car, "OC01", "disponivel")
        started = arrive(car)
        assert started["code"] == "started"
        wait_for(lambda: sim.meter_wh > 100, what="some energy metered")
        gw.kill9()
        gw.stop()  # closes its output pipe
        gw = start(gateway_args(ports, chargers, ws_port))
        gw.read_until("ocpp gateway ready", timeout=20)
        wait_for(lambda: sim.connects >= 2, timeout=20, what="the charger reconnected")
        wait_estado(car, "OC01", "carregando")
        assert car.ask("parar", id_ponto_recarga="OC01")["data"]["code"] == "stopping"
        bill = car.push("custo_final", timeout=30)["data"]
        assert bill["session_id"] == started["session_id"]
        assert len(sim.completed) == 1 and sim.completed[0]["reason"] == "Remote"
        metered_kwh = sim.completed[0]["meter_stop"] / 1000.0
        assert bill["energia_kwh"] == pytest.approx(metered_kwh, abs=1e-9)
        assert bill["cost"] == pytest.approx(round(metered_kwh * PRICE, 2), abs=1e-9)
    finally:
        car.close()
        gw.stop()
        broker.stop()


def test_a_local_rfid_start_is_a_walk_in_session_billed_to_the_id_tag(
    gateway: tuple[Proc, str], broker: tuple[Proc, BrokerPorts], sims: SimLoop, car: Vehicle
) -> None:
    _, url = gateway
    sim = sims.add(url, "OC02", speed=100, meter_every_s=0.1)
    wait_estado(car, "OC02", "disponivel")
    assert sims.run(sim.local_start("RFID042")) == "Accepted"
    wait_estado(car, "OC02", "carregando")
    wait_for(lambda: sim.meter_wh > 1000, what="some energy metered")
    sims.run(sim.end("Local"))
    driver = Vehicle(broker[1].vehicle, "RFID042")
    try:

        def billed() -> list[dict[str, Any]]:
            # the idTag's own account (never a vehicle's), as the broker keeps it
            account = kept_accounts(broker[1]).get("idtag.RFID042") or {}
            return list(account.get("sessoes") or [])

        wait_for(lambda: billed(), timeout=15, what="the walk-in session billed")
        (session,) = billed()
        metered_kwh = sim.completed[0]["meter_stop"] / 1000.0
        assert session["id_ponto_recarga"] == "OC02"
        assert session["energia_kwh"] == pytest.approx(metered_kwh, abs=1e-9)
        assert session["cost"] == pytest.approx(round(metered_kwh * PRICE, 2), abs=1e-9)
        assert driver.ask("custos")["data"]["sessoes"] == []  # no vehicle id is billed
    finally:
        driver.close()


def test_an_id_tag_that_cannot_name_an_account_is_refused(
    gateway: tuple[Proc, str], sims: SimLoop, car: Vehicle
) -> None:
    _, url = gateway
    sim = sims.add(url, "OC02")
    wait_estado(car, "OC02", "disponivel")
    assert sims.run(sim.local_start("bad tag!")) == "Invalid"


def test_security_profile_2_tls(
    tmp_path: Path, broker: tuple[Proc, BrokerPorts], chargers: Path, sims: SimLoop, car: Vehicle
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    ws_port = free_port()
    args = gateway_args(broker[1], chargers, ws_port, "--cert", str(cert), "--key", str(key))
    with running(args, ready="ocpp gateway ready") as gw:
        assert "wss://" in "\n".join(gw.lines)
        client_ctx = ssl.create_default_context(cafile=str(cert))
        sims.add(f"wss://127.0.0.1:{ws_port}/ocpp", "OC01", ssl=client_ctx)
        wait_estado(car, "OC01", "disponivel")


@pytest.mark.slow
def test_one_gateway_holds_a_thousand_chargers(
    tmp_path: Path, broker: tuple[Proc, BrokerPorts], sims: SimLoop
) -> None:
    _, ports = broker
    ids = [f"K{n:04d}" for n in range(1000)]
    chargers = write_chargers(tmp_path / "many.toml", ids, price_kwh=PRICE)
    ws_port = free_port()
    args = gateway_args(ports, chargers, ws_port, level="warning")
    with running(args, ready="ocpp gateway ready", timeout=60) as gw:
        url = f"ws://127.0.0.1:{ws_port}/ocpp"
        many = [sims.add(url, cid, speed=1000, meter_every_s=0.1) for cid in ids]

        def online() -> float:
            status, text = http_get(ports.http, "/metrics")
            return metric(text, "evcharge_points_online") if status == 200 else 0

        wait_for(lambda: online() == 1000, timeout=180, what="1000 chargers online", interval=1)
        assert all(s.booted.is_set() for s in many)
        # one descriptor per charger (its WebSocket): the points share ONE broker connection
        fds = len(os.listdir(f"/proc/{gw.pid}/fd"))
        assert 1000 <= fds < 1000 + 100, fds
        # the gateway still serves a whole session while it holds them all
        car = Vehicle(ports.vehicle, "CARMANY")
        try:
            started = arrive(car, "K0999")
            assert started["code"] == "started", started
            bill = car.push("custo_final", timeout=60)["data"]
            metered_kwh = many[999].completed[0]["meter_stop"] / 1000.0
            assert bill["energia_kwh"] == pytest.approx(metered_kwh, abs=1e-9)
        finally:
            car.close()
