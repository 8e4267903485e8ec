"""An OCPP 1.6J charger in a site: its limit arrives as a TxProfile and the bill
follows the metered energy; a charger that rejects profiles has its limit refused
and cannot be put in a site afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_energy_sites import history
from tests.e2e.test_ocpp_gateway import arrive, gateway_args, wait_estado
from tests.support.ocpp_sims import SimLoop, sim_loop, write_chargers
from tests.support.procs import BrokerPorts, Proc, free_port, running, start_broker_on_free_ports
from tests.support.raw_clients import Vehicle, wait_for

pytestmark = pytest.mark.e2e

PRICE = 2.0
#: The simulated charger runs 5000 times faster than real time: the broker's bound on
#: metered energy (power x wall time) is scaled for it, with room.
SPEED = 5000


@pytest.fixture
def broker(tmp_path: Path, ports: BrokerPorts) -> Iterator[tuple[Proc, BrokerPorts]]:
    proc = start_broker_on_free_ports(
        ports, str(tmp_path / "broker.db"), "--metered-time-scale", str(2 * SPEED)
    )
    try:
        yield proc, ports
    finally:
        proc.stop()


@pytest.fixture
def sims() -> Iterator[SimLoop]:
    with sim_loop() as loop:
        yield loop


def test_an_ocpp_charger_in_a_site_gets_its_profile_and_is_billed_by_the_meter(
    broker: tuple[Proc, BrokerPorts], tmp_path: Path, sims: SimLoop
) -> None:
    _, ports = broker
    chargers = write_chargers(tmp_path / "chargers.toml", ["OE01", "OE02"], price_kwh=PRICE)
    ws_port = free_port()
    car = Vehicle(ports.vehicle, "CARSITE1")
    try:
        with (
            running(gateway_args(ports, chargers, ws_port), ready="ocpp gateway ready"),
            history(ports) as ask,
        ):
            url = f"ws://127.0.0.1:{ws_port}/ocpp"
            sim = sims.add(url, "OE01", speed=SPEED, meter_every_s=0.1)
            wait_estado(car, "OE01", "disponivel")
            reply = ask({"op": "set_site", "name": "yard", "limit_kw": 11, "points": ["OE01"]})
            assert reply.get("ok"), reply
            started = arrive(car, "OE01")
            assert started["code"] == "started", started
            wait_for(
                lambda: any(r[0] == "SetChargingProfile" for r in sim.received),
                timeout=15,
                what="SetChargingProfile",
            )
            profile = next(r[1] for r in sim.received if r[0] == "SetChargingProfile")
            assert profile["charging_profile_purpose"] == "TxProfile"
            assert profile["transaction_id"] == sim.transaction
            schedule = profile["charging_schedule"]
            assert schedule["charging_rate_unit"] == "W"
            assert schedule["charging_schedule_period"][0]["limit"] == 11_000
            assert sim.limit_w == 11_000
            # its MeterValues carry the power drawn: the broker sees 11 kW on the site
            wait_for(
                lambda: ask({"op": "sites"})["sites"][0]["drawn_kw"] == 11.0,
                timeout=15,
                what="the charger's power in the site's figures",
            )
            bill = car.push("custo_final", timeout=60)["data"]
            metered_kwh = sim.completed[0]["meter_stop"] / 1000.0
            assert metered_kwh >= 36.0
            assert bill["energia_kwh"] == pytest.approx(metered_kwh, abs=1e-9)
            assert bill["cost"] == pytest.approx(round(metered_kwh * PRICE, 2), abs=1e-9)

            # a charger that rejects profiles: its limit is refused, and once its hello
            # says so it cannot be put in a site
            bad = sims.add(url, "OE02", speed=10, meter_every_s=0.1, reject_profiles=True)
            wait_estado(car, "OE02", "disponivel")
            reply = ask({"op": "set_site", "name": "shed", "limit_kw": 11, "points": ["OE02"]})
            assert reply.get("ok"), reply  # its first hello said it takes limits
            assert arrive(car, "OE02")["code"] == "started"
            wait_for(
                lambda: any(r[0] == "SetChargingProfile" for r in bad.received),
                timeout=15,
                what="the profile offered",
            )
            assert bad.limit_w is None
            assert ask({"op": "remove_site", "name": "shed"}).get("ok")
            sims.run(bad.drop())  # it reconnects: the gateway says hello again
            wait_for(
                lambda: (
                    "cannot take limits"
                    in ask(
                        {"op": "set_site", "name": "shed", "limit_kw": 11, "points": ["OE02"]}
                    ).get("error", "")
                ),
                timeout=20,
                what="the site refused for a charger that rejects profiles",
            )
    finally:
        car.close()


def test_an_ocpp_201_charger_in_a_site_gets_a_tx_profile_in_watts(
    broker: tuple[Proc, BrokerPorts], tmp_path: Path, sims: SimLoop
) -> None:
    """The same limit reaches a 2.0.1 charger as 2.0.1's SetChargingProfile: a TxProfile
    for its (string) transaction id on its EVSE, unit W."""
    _, ports = broker
    chargers = write_chargers(
        tmp_path / "chargers.toml",
        ["OF01"],
        price_kwh=PRICE,
        extra={"OF01": 'ocpp = "2.0.1"\nconnector = 1\n'},
    )
    ws_port = free_port()
    car = Vehicle(ports.vehicle, "CARSITE2")
    try:
        with (
            running(gateway_args(ports, chargers, ws_port), ready="ocpp gateway ready"),
            history(ports) as ask,
        ):
            url = f"ws://127.0.0.1:{ws_port}/ocpp"
            sim = sims.add(url, "OF01", version="2.0.1", speed=100, meter_every_s=0.1)
            wait_estado(car, "OF01", "disponivel")
            reply = ask({"op": "set_site", "name": "lot", "limit_kw": 7.4, "points": ["OF01"]})
            assert reply.get("ok"), reply
            started = arrive(car, "OF01")
            assert started["code"] == "started", started
            wait_for(
                lambda: any(r[0] == "SetChargingProfile" for r in sim.received),
                timeout=15,
                what="SetChargingProfile",
            )
            profile = next(r[1] for r in sim.received if r[0] == "SetChargingProfile")
            assert profile["charging_profile_purpose"] == "TxProfile"
            assert profile["transaction_id"] == sim.transaction
            (schedule,) = profile["charging_schedule"]
            assert schedule["charging_rate_unit"] == "W"
            assert schedule["charging_schedule_period"][0]["limit"] == 7_400
    finally:
        car.close()
