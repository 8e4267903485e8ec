"""Vehicle identity and queues (security contract, second round), on a real broker.

The attacks: after a driver who used an id without registering disconnected, another
connection registered that id, read the driver's bills and locked the driver out
for good; ``registrar`` for every ``CAR<port>`` id locked out every original client;
a few throwaway ids from one address filled queues.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_broker_vehicles import online_point, reserve
from tests.support.procs import BrokerPorts, Proc, start_broker
from tests.support.raw_clients import Vehicle, vehicle

pytestmark = pytest.mark.e2e


def code_of(reply: dict[str, Any]) -> str:
    return str(reply["data"]["code"])


def test_an_ids_history_cannot_be_taken_over(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    online_point(ports)
    with vehicle(ports.vehicle) as driver:
        assert code_of(reserve(driver, "victim7")) == "reserved"
        assert driver.request("custos", {"id_veiculo": "victim7"})["type"] == "extrato"
    with vehicle(ports.vehicle) as thief:
        stolen = thief.request("registrar", {"id_veiculo": "victim7"})
        assert stolen["type"] == "erro" and code_of(stolen) == "forbidden", stolen
        read = thief.request("custos", {"id_veiculo": "victim7"})
        assert read["type"] == "erro" and code_of(read) == "forbidden", read
        assert code_of(thief.request("status", {"id_veiculo": "victim7"})) == "forbidden"
    # the legitimate path: a driver registers the id while using it, and keeps it
    with vehicle(ports.vehicle) as driver:
        assert code_of(reserve(driver, "alice7", "CP01")) == "reserved"
        token = driver.request("registrar", {"id_veiculo": "alice7"})["data"]["token"]
    with vehicle(ports.vehicle) as thief:
        assert code_of(thief.request("registrar", {"id_veiculo": "alice7"})) == (
            "already_registered"
        )
        assert code_of(thief.request("custos", {"id_veiculo": "alice7"})) == "unauthenticated"
    with vehicle(ports.vehicle) as driver:
        ok = driver.request("autenticar", {"id_veiculo": "alice7", "token": token})
        assert code_of(ok) == "authenticated"
        assert driver.request("custos", {"id_veiculo": "alice7"})["type"] == "extrato"


def test_original_client_ids_cannot_be_registered(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    with vehicle(ports.vehicle) as v:
        reply = v.request("registrar", {"id_veiculo": f"CAR{v.local_port}"})
        assert reply["type"] == "erro" and code_of(reply) == "forbidden"
        assert code_of(v.request("registrar", {"id_veiculo": "CAR1"})) == "forbidden"


def test_registrar_is_limited_per_address(tmp_path: Path, ports: BrokerPorts) -> None:
    proc = start_broker(ports, str(tmp_path / "b.db"), "--max-registrations-per-address", "10")
    try:
        codes = []
        for i in range(11):
            with vehicle(ports.vehicle) as v:
                codes.append(code_of(v.request("registrar", {"id_veiculo": f"burst{i}"})))
        assert codes == ["registered"] * 10 + ["rate_limited"]
        other = Vehicle(ports.vehicle, source="127.0.0.2")  # another address still registers
        try:
            assert code_of(other.request("registrar", {"id_veiculo": "burst11"})) == "registered"
        finally:
            other.close()
    finally:
        proc.stop()


def test_one_address_holds_at_most_eight_live_reservations(
    tmp_path: Path, ports: BrokerPorts
) -> None:
    proc = start_broker(ports, str(tmp_path / "b.db"), "--queue-capacity", "20",
                        "--max-reservations-per-address", "8")  # fmt: skip
    conns: list[Vehicle] = []
    try:
        online_point(ports)
        for i in range(8):
            v = Vehicle(ports.vehicle)
            conns.append(v)
            assert code_of(reserve(v, f"throw{i}")) == "reserved"
        v = Vehicle(ports.vehicle)
        conns.append(v)
        refused = reserve(v, "throw8")
        assert refused["type"] == "erro" and code_of(refused) == "rate_limited", refused
        driver = Vehicle(ports.vehicle, source="127.0.0.3")  # a real driver elsewhere
        conns.append(driver)
        assert code_of(reserve(driver, "realdriver")) == "reserved"
    finally:
        for c in conns:
            c.close()
        proc.stop()


def test_wrong_tokens_lock_out_one_id_not_the_address(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    tokens = {}
    for vid in ("natann", "natben"):
        with vehicle(ports.vehicle) as v:
            tokens[vid] = v.request("registrar", {"id_veiculo": vid})["data"]["token"]
    with vehicle(ports.vehicle) as guesser:
        for i in range(5):
            wrong = guesser.request("autenticar", {"id_veiculo": "natann", "token": f"g{i}"})
            assert code_of(wrong) == "forbidden"
    with vehicle(ports.vehicle) as neighbour:  # same address, another driver: still in
        ok = neighbour.request("autenticar", {"id_veiculo": "natben", "token": tokens["natben"]})
        assert code_of(ok) == "authenticated"
