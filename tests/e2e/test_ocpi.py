"""``ev-broker ocpi`` against a real broker, real stations and an independent eMSP peer.

The peer (tests/support/emsp_peer.py) is a real HTTP server written from the
OCPI 2.2.1 specification; every object the CPO sends it or answers it with is
checked against JSON Schemas written from the specification's tables
(tests/support/ocpi_schemas.py), not against the server's own structs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.emsp_peer import CC, PARTY, EmspPeer, OcpiClient, token_obj
from tests.support.ocpi_schemas import check
from tests.support.procs import BrokerPorts, Proc, broker_ports, free_port, start, start_broker
from tests.support.raw_clients import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

V = "2.2.1"
FAST = ("--speed", "20000")  # a full charge takes well under a second
SLOW = ("--speed", "30")  # a session that runs until stopped
OUTAGE_S = 30.0


@dataclass
class Roaming:
    ports: BrokerPorts
    tmp: Path
    ocpi_port: int
    peer: EmspPeer
    db: Path
    stations: dict[str, Proc]
    cpo: OcpiClient

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ocpi_port}/ocpi"

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "broker", "ocpi", "partners", *args, "--db", str(self.db)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return out.stdout

    def add_station(self, point_id: str, lat: float, lon: float, *extra: str) -> None:
        self.stations[point_id] = start(
            [
                "python", "-m", "station", "run", "--id", point_id, "--lat", str(lat),
                "--lon", str(lon), "--status-port", str(self.ports.status),
                "--station-port", str(self.ports.station), "--interval", "0.5",
                *self.ports.cred_args("station"), *extra,
            ]
        )  # fmt: skip

    def evse(self, lid: str, uid: str) -> dict[str, Any]:
        status, _, doc = self.cpo.call("GET", f"/{V}/locations/{lid}/{uid}")
        assert status == 200, doc
        return dict(doc["data"])

    def wait_status(self, lid: str, uid: str, want: str, timeout: float = 30) -> None:
        wait_for(
            lambda: self.evse(lid, uid)["status"] == want, timeout, f"{uid} {want}", interval=0.1
        )

    def command(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        status, _, doc = self.cpo.call("POST", f"/{V}/commands/{name}", body)
        assert status == 200, doc
        check("Envelope", doc)
        check("CommandResponse", doc["data"])
        return dict(doc["data"])

    def result(self, ref: str, timeout: float = 30) -> dict[str, Any]:
        got = self.peer.wait(
            lambda r: r.path.endswith(f"/commands/{ref}"), timeout, f"result {ref}"
        )
        return dict(got.body)


@pytest.fixture(scope="module")
def roaming(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Roaming]:
    tmp = tmp_path_factory.mktemp("ocpi")
    ports = broker_ports()
    broker = start_broker(
        ports, str(tmp / "broker.db"), "--offline-after", "1", "--offline-grace", "3"
    )
    peer = EmspPeer(free_port())
    peer.tokens = [token_obj("TOK1"), token_obj("TOK2"), token_obj("BAD", valid=False)]
    peer.up()
    ocpi: Proc | None = None
    r: Roaming | None = None
    try:
        ocpi_port = free_port()
        r = Roaming(ports, tmp, ocpi_port, peer, tmp / "ocpi.db", {}, OcpiClient("", None))
        r.cpo = OcpiClient(r.base, None)
        r.add_station("RMA-1", -12.27, -38.97, *SLOW)
        r.add_station("RMA-2", -12.2702, -38.9702, *FAST)
        r.add_station("RMB", -12.30, -38.90, *FAST)
        ocpi = start(
            [
                "python", "-m", "broker", "ocpi", "--events-port", str(ports.events),
                "--history-port", str(ports.history), "--vehicle-port", str(ports.vehicle),
                "--port", str(ocpi_port), "--db", str(r.db), "--party", "BR-EVC",
                "--retry-initial", "0.2", "--retry-max", "1", "--token-pull", "1",
                *ports.cred_args("consumer"),
            ]
        )  # fmt: skip
        ocpi.read_until("ocpi ready", timeout=30)
        yield r
    finally:
        if r is not None:
            for proc in r.stations.values():
                proc.stop()
        if ocpi is not None:
            ocpi.stop()
        peer.down()
        broker.stop()


@pytest.fixture(scope="module")
def registered(roaming: Roaming) -> Roaming:
    """The eMSP registered with the CPO: token A -> its token B -> our token C."""
    out = roaming.cli("add", "peer")
    token_a = out.strip().rsplit(" ", 1)[-1]
    cpo = OcpiClient(roaming.base, token_a)
    status, _, versions = cpo.call("GET", "/versions")
    assert status == 200 and versions["data"][0]["version"] == V, versions
    status, _, details = cpo.call("GET", versions["data"][0]["url"])
    creds_url = next(
        e["url"] for e in details["data"]["endpoints"] if e["identifier"] == "credentials"
    )
    mine = {
        "token": roaming.peer.token_b, "url": roaming.peer.versions_url,
        "roles": [{"role": "EMSP", "business_details": {"name": "Peer"}, "party_id": PARTY,
                   "country_code": CC}],
    }  # fmt: skip
    status, _, doc = cpo.call("POST", creds_url, mine)
    assert status == 200 and doc["status_code"] == 1000, doc
    check("Credentials", doc["data"])
    token_c = doc["data"]["token"]
    assert token_c != token_a and doc["data"]["roles"][0]["role"] == "CPO"
    # token A no longer opens anything
    status, _, doc = cpo.call("GET", f"/{V}/locations")
    assert status == 401 and doc["status_code"] == 2001
    roaming.cpo = OcpiClient(roaming.base, token_c)
    return roaming


def test_handshake_and_bad_input(registered: Roaming) -> None:
    r = registered
    status, headers, doc = r.cpo.call("GET", f"/{V}/locations")
    assert status == 200 and doc["status_code"] == 1000
    assert headers["x-request-id"] == "req-1" and headers["x-correlation-id"] == "corr-1"
    # registering twice with the same token: 405
    status, _, doc = r.cpo.call(
        "POST", f"/{V}/credentials", {"token": "x", "url": "y", "roles": []}
    )
    assert status == 405
    # an unknown token
    status, _, doc = r.cpo.call("GET", f"/{V}/locations", token="nope")
    assert status == 401 and doc["status_code"] == 2001
    check("Envelope", doc)
    # malformed JSON
    status, _, doc = r.cpo.call("POST", f"/{V}/commands/START_SESSION", raw=b"{not json")
    assert status == 400 and doc["status_code"] == 2001
    # a missing field
    status, _, doc = r.cpo.call("POST", f"/{V}/commands/STOP_SESSION", {"session_id": "x"})
    assert status == 400 and doc["status_code"] == 2001 and "response_url" in doc["status_message"]
    # unknown location / EVSE
    status, _, doc = r.cpo.call("GET", f"/{V}/locations/NOPE")
    assert status == 404 and doc["status_code"] == 2003
    status, _, doc = r.cpo.call("GET", f"/{V}/locations/RMA/NOPE")
    assert status == 404 and doc["status_code"] == 2003
    # partners list shows it registered, never a token
    listed = [json.loads(line) for line in r.cli("list", "--json").splitlines()]
    assert listed[0]["state"] == "registered" and listed[0]["party"] == f"{CC}-{PARTY}"
