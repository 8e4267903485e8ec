"""`ev-station run` against a real `ev-broker serve`, with a raw TCP JSON vehicle.

The vehicle is the raw client from ``tests.support.raw_clients``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import BrokerPorts, Proc, broker_ports, running, start_broker
from tests.support.raw_clients import Vehicle, kept_accounts, wait_for

pytestmark = pytest.mark.e2e

LAT, LON = -12.2664, -38.9663


def station_args(ports: BrokerPorts, *extra: str, point: str = "CP01") -> list[str]:
    return [
        "python", "-m", "station", "run", "--id", point, "--lat", str(LAT), "--lon", str(LON),
        "--power-kw", "50", "--price-kwh", "2.0", "--interval", "0.5",
        "--status-port", str(ports.status), "--station-port", str(ports.station),
        *ports.cred_args("station"), *extra,
    ]  # fmt: skip


def point(car: Vehicle, point_id: str = "CP01") -> dict[str, Any] | None:
    reply = car.ask("consulta", localizacao={"latitude": LAT, "longitude": LON})
    assert reply["type"] == "lista_pontos"
    return next((p for p in reply["data"] if p["id"] == point_id), None)


def wait_estado(car: Vehicle, estado: str, what: str, point_id: str = "CP01") -> None:
    """Poll until the broker lists ``point_id`` in ``estado`` (10 s at most)."""
    wait_for(lambda: (point(car, point_id) or {}).get("estado") == estado, timeout=10, what=what)


@pytest.fixture
def car(broker: tuple[Proc, BrokerPorts]) -> Iterator[Vehicle]:
    c = Vehicle(broker[1].vehicle, "CARE2E1")
    try:
        yield c
    finally:
        c.close()


def test_station_registers_and_reports(broker: tuple[Proc, BrokerPorts], car: Vehicle) -> None:
    _, ports = broker
    with running(station_args(ports), ready="welcomed by the broker"):
        wait_estado(car, "disponivel", what="CP01 online")
        p = point(car)
        assert p is not None
        assert p["available"] is True and p["potencia_kw"] == 50.0 and p["preco_kwh"] == 2.0
        assert p["distance"] == 0.0


def test_reserve_arrive_charge_and_bill(broker: tuple[Proc, BrokerPorts], car: Vehicle) -> None:
    _, ports = broker
    with running(station_args(ports, "--speed", "3600"), ready="welcomed by the broker") as station:
        wait_estado(car, "disponivel", what="CP01 online")
        reply = car.ask("reserva", id_ponto_recarga="CP01", tempo_estimado=5)
        assert reply["data"]["code"] == "reserved", reply
        station.read_until("state reservado", timeout=5)  # the broker sent hold; it was acked
        reply = car.ask(
            "chegada",
            id_ponto_recarga="CP01",
            nivel_bateria=20,
            nivel_carregar=80,
            metodo_pagamento="Pix",
            capacidade_kwh=60,
        )
        assert reply["data"]["code"] == "started", reply
        bill = car.push("custo_final", timeout=10)["data"]
        assert bill["energia_kwh"] == 36.0 and float(bill["cost"]) == 72.0
        assert bill["nivel_inicial"] == 20 and bill["nivel_final"] == 80
        end = car.push("encerramento", timeout=5)["data"]
        assert end["session_id"] == bill["session_id"]
        wait_estado(car, "disponivel", what="free again")
        statement = car.ask("custos")["data"]
        assert len(statement["sessoes"]) == 1 and float(statement["total"]) == 72.0


def test_mute_station_makes_arrival_unreachable(
    broker: tuple[Proc, BrokerPorts], car: Vehicle
) -> None:
    _, ports = broker
    with running(station_args(ports, "--mute-commands"), ready="welcomed by the broker"):
        wait_estado(car, "disponivel", what="CP01 online")
        reply = car.ask(
            "chegada",
            timeout=15,
            id_ponto_recarga="CP01",
            nivel_bateria=20,
            nivel_carregar=80,
            metodo_pagamento="Pix",
        )
        assert reply["data"]["code"] == "point_unreachable", reply


def test_fault_is_reported_and_refuses_reservations(
    broker: tuple[Proc, BrokerPorts], car: Vehicle
) -> None:
    _, ports = broker
    with running(station_args(ports, "--fault-after", "1"), ready="welcomed by the broker"):
        wait_estado(car, "indisponivel", what="CP01 faulted")
        reply = car.ask("reserva", id_ponto_recarga="CP01")
        assert reply["data"]["status"] == "error", reply


@pytest.mark.slow
def test_completion_is_billed_once_across_a_broker_kill(tmp_path: Path) -> None:
    ports = broker_ports()
    db = str(tmp_path / "broker.db")
    extra = ("--offline-after", "1.5", "--offline-grace", "60")
    broker = start_broker(ports, db, *extra)
    try:
        # 20 -> 80 % of 60 kWh at 50 kW: 2592 simulated s = 4.3 s at --speed 600
        with running(
            station_args(ports, "--speed", "600", "--broker-silence", "2.5"),
            ready="welcomed by the broker",
        ) as station:
            car = Vehicle(ports.vehicle, "CARKILL")
            try:
                wait_estado(car, "disponivel", what="online")
                reply = car.ask(
                    "chegada", id_ponto_recarga="CP01", nivel_bateria=20, nivel_carregar=80,
                    metodo_pagamento="Pix", capacidade_kwh=60,
                )  # fmt: skip
                assert reply["data"]["code"] == "started", reply
            finally:
                car.close()
            broker.kill9()  # the session completes while the broker is dead
            broker.stop()  # (already dead: this only closes its output pipe)
            station.read_until("complete (target_reached)", timeout=10)
            broker = start_broker(ports, db, *extra)  # same database, same ports
            station.read_until("re-creating", timeout=10)

            def statement() -> dict[str, Any]:  # as kept (a new connection may not read it)
                return dict(kept_accounts(ports).get("CARKILL") or {"sessoes": []})

            wait_for(lambda: len(statement()["sessoes"]) > 0, timeout=15, what="billed")
            # once acknowledged the station stops resending: nothing can bill it again
            station.read_until("acknowledged by the broker", timeout=15)
            kept = statement()
            assert len(kept["sessoes"]) == 1, kept
            assert kept["sessoes"][0]["energia_kwh"] == 36.0
            assert float(kept["total"]) == 72.0
    finally:
        broker.stop()


def test_fleet_registers_every_station(broker: tuple[Proc, BrokerPorts], car: Vehicle) -> None:
    _, ports = broker
    args = ["python", "-m", "station", "fleet", "--count", "25", "--prefix", "FL", "--seed", "5",
            "--center", f"{LAT},{LON}", "--radius-km", "3", "--interval", "0.5",
            "--status-port", str(ports.status), "--station-port", str(ports.station),
            *ports.cred_args("station")]  # fmt: skip
    with running(args, ready="fleet ready"):

        def all_online() -> bool:
            reply = car.ask("consulta", localizacao={"latitude": LAT, "longitude": LON}, limite=100)
            ours = [p for p in reply["data"] if p["id"].startswith("FL")]
            return len(ours) == 25 and all(p["estado"] == "disponivel" for p in ours)

        wait_for(all_online, timeout=10, what="25 fleet stations online")
        reply = car.ask("chegada", id_ponto_recarga="FL0013", nivel_bateria=50,
                        nivel_carregar=60, metodo_pagamento="Pix")  # fmt: skip
        assert reply["data"]["code"] == "started", reply  # the command reached FL0013
        bill = car.push("custo_final", timeout=10)["data"]
        assert bill["id_ponto_recarga"] == "FL0013" and bill["energia_kwh"] == 6.0
