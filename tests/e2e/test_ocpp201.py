"""`ev-station ocpp` with OCPP 2.0.1 chargers (the ``ocpp`` package's v201 ChargePoint
over real WebSockets), a real broker and the raw vehicle client; multi-connector
chargers and Security Profile 3 (mutual TLS)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.test_broker_availability import history
from tests.e2e.test_ocpp_gateway import PRICE, arrive, broker, gateway_args, sims, wait_estado
from tests.support.ocpp_sims import SimLoop, write_chargers
from tests.support.procs import BrokerPorts, Proc, free_port, running
from tests.support.raw_clients import Vehicle, kept_accounts, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["broker", "sims"]  # fixtures, imported (broker: for fast metered chargers)

V201 = 'ocpp = "2.0.1"\nconnector = 1\n'


@pytest.fixture
def gateway(broker: tuple[Proc, BrokerPorts], tmp_path: Path) -> Iterator[tuple[Proc, str]]:
    chargers = write_chargers(
        tmp_path / "chargers.toml",
        ["N01", "N02", "MC01"],
        price_kwh=PRICE,
        extra={"N01": V201, "MC01": "connectors = [1, 2]\n"},  # N02: auto
    )
    ws_port = free_port()
    with running(gateway_args(broker[1], chargers, ws_port), ready="ocpp gateway ready") as proc:
        yield proc, f"ws://127.0.0.1:{ws_port}/ocpp"


@pytest.fixture
def car(broker: tuple[Proc, BrokerPorts]) -> Iterator[Vehicle]:
    c = Vehicle(broker[1].vehicle, "CAR201")
    try:
        yield c
    finally:
        c.close()


def kinds(sim: Any) -> list[str]:
    return [r[0] for r in sim.received]


def test_201_boot_configure_reserve_start_meter_stop_and_bill(
    gateway: tuple[Proc, str], sims: SimLoop, car: Vehicle
) -> None:
    _, url = gateway
    sim = sims.add(url, "N01", version="2.0.1", speed=1000, meter_every_s=0.1)
    wait_estado(car, "N01", "disponivel")
    wait_for(lambda: "GetVariables" in kinds(sim), what="sampling configured")
    assert sim.configuration == {
        "SampledDataCtrlr.TxUpdatedInterval": "10",
        "SampledDataCtrlr.TxUpdatedMeasurands": "Energy.Active.Import.Register",
    }
    assert car.ask("reserva", id_ponto_recarga="N01")["data"]["code"] == "reserved"
    assert kinds(sim).count("ReserveNow") == 1
    started = arrive(car, "N01")
    assert started["code"] == "started", started
    assert ("RequestStartTransaction", "CAR201") in sim.received
    bill = car.push("custo_final", timeout=30)["data"]
    assert "RequestStopTransaction" in kinds(sim)  # stopped at the vehicle's target
    (done,) = sim.completed
    assert bill["energia_kwh"] == pytest.approx(done["meter_stop"] / 1000.0, abs=1e-9)
    assert bill["cost"] == pytest.approx(round(bill["energia_kwh"] * PRICE, 2), abs=1e-9)
    first, answer = sim.answers[0]
    assert first == "Started" and answer.id_token_info == {"status": "Accepted"}
    wait_estado(car, "N01", "disponivel")


def test_201_reservation_refused_by_the_charger(
    gateway: tuple[Proc, str], sims: SimLoop, car: Vehicle
) -> None:
    _, url = gateway
    sim = sims.add(url, "N02", version="2.0.1", reserve_answer="Faulted")  # auto: negotiated
    wait_estado(car, "N02", "disponivel")
    reply = car.ask("reserva", id_ponto_recarga="N02")["data"]
    assert reply["code"] == "point_unavailable", reply
    assert car.ask("status")["data"]["reserva"] is None and kinds(sim).count("ReserveNow") == 1


def test_201_offline_transaction_replayed_after_reconnection_is_billed_once(
    broker: tuple[Proc, BrokerPorts], gateway: tuple[Proc, str], sims: SimLoop, car: Vehicle
) -> None:
    _, url = gateway
    sim = sims.add(url, "N01", version="2.0.1", speed=100, meter_every_s=0.1)
    wait_estado(car, "N01", "disponivel")
    started = arrive(car, "N01")
    assert started["code"] == "started"
    wait_for(lambda: sim.meter_wh > 500, what="some energy metered")
    sims.run(sim.drop(offline_s=1.0))  # offline shorter than the broker's window
    sims.run(sim.end("Local"))  # ends while offline: kept, replayed on reconnection
    wait_for(lambda: sim.connects >= 2 and not sim._backlog, what="replayed", timeout=15)
    offline = [e for e in sim.sent if e.offline]
    assert [e.event_type for e in offline][-1] == "Ended"
    bill = car.push("custo_final", timeout=30)["data"]
    assert bill["session_id"] == started["session_id"]
    (done,) = sim.completed
    assert bill["energia_kwh"] == pytest.approx(done["meter_stop"] / 1000.0, abs=1e-9)
    sims.run(sim.replay("Ended"))  # the answer was lost: the charger sends it again
    statement = car.ask("custos")["data"]
    assert len(statement["sessoes"]) == 1 and statement["total"] == bill["cost"]


def test_201_walk_in_security_event_and_out_of_service(
    broker: tuple[Proc, BrokerPorts], gateway: tuple[Proc, str], sims: SimLoop, car: Vehicle
) -> None:
    _, url = gateway
    sim = sims.add(url, "N01", version="2.0.1", speed=100, meter_every_s=0.1)
    wait_estado(car, "N01", "disponivel")
    sims.run(sim.security_event("FirmwareUpdated"))
    assert sims.run(sim.local_start("RFID201")) == "Accepted"
    wait_estado(car, "N01", "carregando")
    sims.run(sim.end("Local"))

    # billed to the idTag's own account
    def billed() -> list[Any]:
        return list((kept_accounts(broker[1]).get("idtag.RFID201") or {}).get("sessoes") or [])

    wait_for(billed, timeout=15, what="walk-in billed")
    with history(broker[1]) as ask:
        req = {"op": "set_availability", "point_id": "N01", "available": False, "reason": "x"}
        assert ask(req)["ok"] is True
        wait_for(lambda: ("ChangeAvailability", "Inoperative") in sim.received, what="Inop")


def test_multi_connector_charger_one_websocket_a_point_per_connector(
    gateway: tuple[Proc, str], sims: SimLoop, car: Vehicle
) -> None:
    _, url = gateway
    sim = sims.add(url, "MC01", connector=2, speed=1000, meter_every_s=0.1)  # 1.6J
    wait_estado(car, "MC01-2", "disponivel")
    wait_estado(car, "MC01-1", "indisponivel")  # its connector said nothing
    started = arrive(car, "MC01-2")
    assert started["code"] == "started", started
    bill = car.push("custo_final", timeout=30)["data"]
    assert bill["id_ponto_recarga"] == "MC01-2"
    assert bill["energia_kwh"] == pytest.approx(sim.completed[0]["meter_stop"] / 1000.0)


def _cert(tmp: Path, name: str, cn: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    """A key and certificate for ``cn``: self-signed (a CA), or signed by ``ca``."""
    key, crt = tmp / f"{name}.key", tmp / f"{name}.pem"
    base = ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
            "-subj", f"/CN={cn}", "-days", "1"]  # fmt: skip
    if ca is None:
        args = [*base, "-x509", "-out", str(crt), "-addext", "subjectAltName=IP:127.0.0.1"]
        subprocess.run(args, check=True, capture_output=True)
        return crt, key
    csr = tmp / f"{name}.csr"
    subprocess.run([*base, "-out", str(csr)], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
         "-CAcreateserial", "-days", "1", "-out", str(crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


def test_security_profile_3_client_certificate_cn_must_be_the_charger_id(
    tmp_path: Path, broker: tuple[Proc, BrokerPorts], sims: SimLoop, car: Vehicle
) -> None:
    ca = _cert(tmp_path, "ca", "test-ca")
    server = _cert(tmp_path, "server", "localhost")  # self-signed server certificate
    good = _cert(tmp_path, "good", "T3", ca)
    wrong = _cert(tmp_path, "wrong", "SOMEONE", ca)
    chargers = tmp_path / "p3.toml"
    chargers.write_text(
        '[[charger]]\nid = "T3"\nlatitude = -12.2664\nlongitude = -38.9663\n'
        'price_kwh = 2.0\nsecurity_profile = 3\nocpp = "2.0.1"\n'
    )
    ws_port = free_port()
    args = gateway_args(broker[1], chargers, ws_port, "--cert", str(server[0]), "--key",
                        str(server[1]), "--client-ca", str(ca[0]))  # fmt: skip

    def client(cert: tuple[Path, Path]) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(server[0]))
        ctx.load_cert_chain(cert[0], cert[1])
        return ctx

    with running(args, ready="ocpp gateway ready"):
        url = f"wss://127.0.0.1:{ws_port}/ocpp"
        assert _status(f"{url}/T3", client(wrong)) == 401  # CN is not the charger id
        no_cert = ssl.create_default_context(cafile=str(server[0]))
        assert _status(f"{url}/T3", no_cert) == 401  # profile 3: a certificate is required
        sim = sims.add(url, "T3", password="", version="2.0.1", ssl=client(good))
        wait_estado(car, "T3", "disponivel")
        assert sim.connects == 1


def _status(url: str, ctx: ssl.SSLContext) -> int | None:
    """The HTTP status of a refused upgrade; None when the WebSocket opened."""

    async def attempt() -> int | None:
        try:
            # (ignored below) websockets types subprotocols as Subprotocol (a NewType of str)
            async with connect(url, subprotocols=["ocpp2.0.1"], ssl=ctx, open_timeout=10):  # type: ignore[list-item]
                return None
        except InvalidStatus as exc:
            return int(exc.response.status_code)

    return asyncio.run(attempt())
