"""``ev-broker ocpi`` against a real broker, real stations and an independent eMSP peer.

The peer (tests/support/emsp_peer.py) is a real HTTP server written from the
OCPI 2.2.1 specification; every object the CPO sends it or answers it with is
checked against JSON Schemas written from the specification's tables
(tests/support/ocpi_schemas.py), not against the server's own structs.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.emsp_peer import CC, PARTY, EmspPeer, OcpiClient, token_obj
from tests.support.ocpi_schemas import check
from tests.support.procs import BrokerPorts, Proc, broker_ports, free_port, start, start_broker
from tests.support.raw_clients import Vehicle, wait_for

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
    ocpi: Proc | None = None

    def start_ocpi(self) -> None:
        """``ev-broker ocpi`` on its port and store (again, after a kill), once ready."""
        self.ocpi = start(
            [
                "python", "-m", "broker", "ocpi", "--events-port", str(self.ports.events),
                "--history-port", str(self.ports.history), "--vehicle-port",
                str(self.ports.vehicle), "--port", str(self.ocpi_port), "--db", str(self.db),
                "--party", "BR-EVC", "--retry-initial", "0.2", "--retry-max", "1",
                "--token-pull", "1", "--session-refresh", "0.3",
                *self.ports.cred_args("consumer"),
            ]
        )  # fmt: skip
        self.ocpi.read_until("ocpi ready", timeout=30)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ocpi_port}/ocpi"

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "broker", "ocpi", "partners", *args, "--db", str(self.db)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return out.stdout

    def tokens(self, *args: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-m", "broker", "ocpi", "tokens", *args, "--db", str(self.db)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return out.stdout.split()

    def tokens_of_vehicles(self) -> list[str]:
        """Roaming driver ids whose vehicle token the OCPI store keeps."""
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            rows = db.execute("SELECT vehicle_id FROM drivers WHERE vehicle_token IS NOT NULL")
            return [r[0] for r in rows]

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
        def now() -> str | None:
            status, _, doc = self.cpo.call("GET", f"/{V}/locations/{lid}/{uid}")
            return str(doc["data"]["status"]) if status == 200 else None

        wait_for(lambda: now() == want, timeout, f"{uid} {want}", interval=0.1)

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


@contextlib.contextmanager
def roaming_stack(tmp: Path, stations: dict[str, tuple[float, float, tuple[str, ...]]],
                  *broker_extra: str) -> Iterator[Roaming]:  # fmt: skip
    """Broker, ``stations``, ``ev-broker ocpi`` and an eMSP peer (not yet registered)."""
    ports = broker_ports()
    broker = start_broker(
        ports, str(tmp / "broker.db"), "--offline-after", "1", "--offline-grace", "3",
        *broker_extra,
    )  # fmt: skip
    peer = EmspPeer(free_port())
    rfid = {**token_obj("RFID042"), "type": "RFID"}
    peer.tokens = [token_obj("TOK1"), token_obj("TOK2"), token_obj("BAD", valid=False), rfid]
    peer.up()
    r: Roaming | None = None
    try:
        ocpi_port = free_port()
        r = Roaming(ports, tmp, ocpi_port, peer, tmp / "ocpi.db", {}, OcpiClient("", None))
        r.cpo = OcpiClient(r.base, None)
        for pid, (lat, lon, extra) in stations.items():
            r.add_station(pid, lat, lon, *extra)
        r.start_ocpi()
        yield r
    finally:
        if r is not None:
            for proc in r.stations.values():
                proc.stop()
            if r.ocpi is not None:
                r.ocpi.stop()
        peer.down()
        broker.stop()


@pytest.fixture(scope="module")
def roaming(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Roaming]:
    stations = {
        "RMA-1": (-12.27, -38.97, SLOW),
        "RMA-2": (-12.2702, -38.9702, FAST),
        "RMB": (-12.30, -38.90, FAST),
    }
    with roaming_stack(tmp_path_factory.mktemp("ocpi"), stations) as r:
        yield r


@pytest.fixture(scope="module")
def registered(roaming: Roaming) -> Roaming:
    return register(roaming)


def register(roaming: Roaming) -> Roaming:
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
    # tokens pushed by the eMSP (our Tokens receiver), then patched
    pushed = {**token_obj("PUSHED"), "type": "RFID"}
    status, _, doc = r.cpo.call("PUT", f"/{V}/tokens/{CC}/{PARTY}/PUSHED?type=RFID", pushed)
    assert status == 200 and doc["status_code"] == 1000, doc
    change = {"valid": False, "last_updated": pushed["last_updated"]}
    status, _, doc = r.cpo.call("PATCH", f"/{V}/tokens/{CC}/{PARTY}/PUSHED?type=RFID", change)
    assert status == 200, doc
    status, _, doc = r.cpo.call("GET", f"/{V}/tokens/{CC}/{PARTY}/PUSHED?type=RFID")
    assert doc["data"]["valid"] is False
    status, _, doc = r.cpo.call("PUT", f"/{V}/tokens/{CC}/{PARTY}/OTHER", pushed)
    assert status == 400 and doc["status_code"] == 2001
    status, _, doc = r.cpo.call("GET", f"/{V}/tokens/{CC}/{PARTY}/NONE")
    assert status == 404 and doc["status_code"] == 2004
    # a command this CPO does not support, and one OCPI does not know
    status, _, doc = r.cpo.call("POST", f"/{V}/commands/UNLOCK_CONNECTOR", {})
    assert doc["data"]["result"] == "NOT_SUPPORTED"
    status, _, doc = r.cpo.call("POST", f"/{V}/commands/SELF_DESTRUCT", {})
    assert status == 404 and doc["status_code"] == 2001
    # partners list shows it registered, never a token
    listed = [json.loads(line) for line in r.cli("list", "--json").splitlines()]
    assert listed[0]["state"] == "registered" and listed[0]["party"] == f"{CC}-{PARTY}"


def start_cmd(peer: EmspPeer, ref: str, uid: str, lid: str, evse: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "response_url": f"{peer.url}/ocpi/{V}/commands/{ref}",
        "token": token_obj(uid), "location_id": lid,
    }  # fmt: skip
    if evse:
        body["evse_uid"] = evse
    return body


def test_locations_pull_paginated_and_validated(registered: Roaming) -> None:
    r = registered
    wait_for(lambda: r.cpo.call("GET", f"/{V}/locations/RMB")[0] == 200, 30, "RMB listed")
    status, headers, doc = r.cpo.call("GET", f"/{V}/locations?limit=1")
    assert status == 200 and headers["x-total-count"] == "2" and headers["x-limit"] == "1"
    seen = [loc["id"] for loc in doc["data"]]
    nxt = headers["link"].split(";")[0].strip("<>")
    status, headers, doc = r.cpo.call("GET", nxt)
    seen += [loc["id"] for loc in doc["data"]]
    assert "link" not in headers and seen == ["RMA", "RMB"]
    status, _, doc = r.cpo.call("GET", f"/{V}/locations/RMA")
    check("Location", doc["data"])
    assert [e["uid"] for e in doc["data"]["evses"]] == ["RMA-1", "RMA-2"]
    assert doc["data"]["country_code"] == "BR" and doc["data"]["party_id"] == "EVC"
    status, _, doc = r.cpo.call("GET", f"/{V}/locations?date_from=2999-01-01T00:00:00Z")
    assert doc["data"] == []
    status, _, doc = r.cpo.call("GET", f"/{V}/locations?limit=x")
    assert status == 400 and doc["status_code"] == 2001
    status, _, doc = r.cpo.call("GET", f"/{V}/tariffs")
    assert status == 200 and doc["data"]
    for t in doc["data"]:
        check("Tariff", t)


def test_start_session_charges_and_ends_with_one_cdr_billed(registered: Roaming) -> None:
    r, peer = registered, registered.peer
    billing_db = r.tmp / "billing.db"
    billing = start(
        [
            "python", "-m", "broker", "billing", "--events-port", str(r.ports.events),
            "--history-port", str(r.ports.history), "--db", str(billing_db),
            *r.ports.cred_args(),
        ]
    )  # fmt: skip
    try:
        billing.read_until("billing ready", timeout=30)
        resp = r.command("START_SESSION", start_cmd(peer, "start1", "TOK1", "RMA", "RMA-2"))
        assert resp["result"] == "ACCEPTED"
        assert r.result("start1")["result"] == "ACCEPTED"
        cdr = peer.wait(lambda x: x.path.endswith("/cdrs"), 30, "the CDR").body
        assert cdr["cdr_token"]["uid"] == "TOK1" and cdr["cdr_location"]["evse_uid"] == "RMA-2"
        assert cdr["total_energy"] == 60.0 and cdr["total_cost"]["incl_vat"] == 120.0
        sessions = peer.got(
            lambda x: x.method == "PUT" and x.path.endswith(f"/sessions/BR/EVC/{cdr['session_id']}")
        )
        assert [s.body["status"] for s in sessions] == ["ACTIVE", "COMPLETED"]
        # the status went through CHARGING as PATCHes of that EVSE
        patches = peer.got(lambda x: x.method == "PATCH" and x.path.endswith("/RMA/RMA-2"))
        assert "CHARGING" in [p.body["status"] for p in patches]
        # the CPO serves the CDR too, and the ledger billed the session once
        _, headers, doc = r.cpo.call("GET", f"/{V}/cdrs")
        assert [c["id"] for c in doc["data"]] == [cdr["id"]] and headers["x-total-count"] == "1"

        def billed() -> list[dict[str, Any]]:
            out = subprocess.run(
                [sys.executable, "-m", "broker", "billing", "report", "--db", str(billing_db),
                 "--format", "json"], capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            acc = json.loads(out.stdout)["accounts"].get("ocpi.NLEMS.TOK1", {})
            return list(acc.get("sessoes", []))

        wait_for(lambda: len(billed()) == 1, 30, "the roaming session billed")
        assert billed()[0]["session_id"] == cdr["session_id"] and billed()[0]["cost"] == 120.0
        # the CDR the eMSP got is the ledger's CDR of that bill
        out = subprocess.run(
            [sys.executable, "-m", "broker", "billing", "report", "--db", str(billing_db),
             "--format", "ocpi"], capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        (ledger,) = [c for c in json.loads(out.stdout) if c["id"] == cdr["session_id"]]
        for name in ("total_cost", "total_energy", "total_energy_cost", "charging_periods"):
            assert cdr[name] == ledger[name], name
        assert len(peer.got(lambda x: x.path.endswith("/cdrs"))) == 1
        assert not peer.invalid, peer.invalid
    finally:
        billing.stop()


def test_reserve_now_holds_the_queue_then_start(registered: Roaming) -> None:
    r, peer = registered, registered.peer
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
    body = {
        "response_url": f"{peer.url}/ocpi/{V}/commands/res1", "token": token_obj("TOK2"),
        "expiry_date": soon, "reservation_id": "R1", "location_id": "RMB",
    }  # fmt: skip
    assert r.command("RESERVE_NOW", body)["result"] == "ACCEPTED"
    assert r.result("res1")["result"] == "ACCEPTED"
    r.wait_status("RMB", "RMB", "RESERVED")
    # a walk-in driver cannot take the point the roaming driver holds
    with contextlib.closing(Vehicle(r.ports.vehicle, "WALKIN1")) as v:
        reply = v.ask(
            "chegada", id_ponto_recarga="RMB", nivel_bateria=20, nivel_carregar=60,
            metodo_pagamento="Pix",
        )  # fmt: skip
    assert reply["data"]["code"] == "no_reservation", reply
    assert (
        r.command("START_SESSION", start_cmd(peer, "start2", "TOK2", "RMB", None))["result"]
        == "ACCEPTED"
    )
    assert r.result("start2")["result"] == "ACCEPTED"
    peer.wait(lambda x: x.path.endswith("/cdrs") and x.body["cdr_token"]["uid"] == "TOK2", 30)
    # a reservation cancelled through OCPI
    body.update(reservation_id="R2", location_id="RMA", evse_uid="RMA-1")
    body["response_url"] = f"{peer.url}/ocpi/{V}/commands/res2"
    assert r.command("RESERVE_NOW", body)["result"] == "ACCEPTED"
    assert r.result("res2")["result"] == "ACCEPTED"
    cancel = {"response_url": f"{peer.url}/ocpi/{V}/commands/can2", "reservation_id": "R2"}
    assert r.command("CANCEL_RESERVATION", cancel)["result"] == "ACCEPTED"
    assert r.result("can2")["result"] == "ACCEPTED"
    assert not peer.invalid, peer.invalid


def test_commands_refused_for_unknown_offline_evse_and_bad_tokens(registered: Roaming) -> None:
    r, peer = registered, registered.peer
    resp = r.command("START_SESSION", start_cmd(peer, "x1", "TOK1", "RMA", "NOPE"))
    assert resp["result"] == "REJECTED"
    resp = r.command("STOP_SESSION", {"response_url": f"{peer.url}/x", "session_id": "nope"})
    assert resp["result"] == "UNKNOWN_SESSION"
    # tokens are pulled from the eMSP: BAD is cached as invalid, whatever a command claims
    wait_for(
        lambda: r.cpo.call("GET", f"/{V}/tokens/NL/EMS/BAD?type=APP_USER")[0] == 200,
        30, "the eMSP's tokens pulled",
    )  # fmt: skip
    resp = r.command("START_SESSION", start_cmd(peer, "x2", "BAD", "RMA", "RMA-1"))
    assert resp["result"] == "REJECTED"
    claimed = start_cmd(peer, "x3", "NEW", "RMA", "RMA-1")
    claimed["token"]["valid"] = False
    assert r.command("START_SESSION", claimed)["result"] == "REJECTED"
    # an offline EVSE: accepted by the CPO, refused by the point
    r.add_station("RMC", -12.4, -38.8, *FAST)
    wait_for(lambda: r.cpo.call("GET", f"/{V}/locations/RMC")[0] == 200, 30, "RMC listed")
    r.stations.pop("RMC").stop()
    r.wait_status("RMC", "RMC", "UNKNOWN")
    assert (
        r.command("START_SESSION", start_cmd(peer, "x4", "TOK1", "RMC", None))["result"]
        == "ACCEPTED"
    )
    assert r.result("x4")["result"] == "EVSE_INOPERATIVE"


def test_emsp_down_then_every_push_delivered_in_order(registered: Roaming) -> None:
    r, peer = registered, registered.peer
    before = len(peer.received)
    peer.down()
    try:
        assert (
            r.command("START_SESSION", start_cmd(peer, "out1", "TOK1", "RMA", "RMA-2"))["result"]
            == "ACCEPTED"
        )
        wait_for(
            lambda: json.loads(r.cli("list", "--json").splitlines()[0])["pending"] >= 3,
            30, "pushes waiting in the outbox",
        )  # fmt: skip
        time.sleep(OUTAGE_S)  # the outage itself: the eMSP is unreachable this long
    finally:
        peer.up()
    cdr = peer.wait(
        lambda x: x.path.endswith("/cdrs") and x.at > 0 and x in peer.received[before:], 30
    )
    after = peer.received[before:]
    kinds = [
        "result" if x.path.endswith("/out1") else "session" if "/sessions/" in x.path
        else "cdr" if x.path.endswith("/cdrs") else "location"
        for x in after
    ]  # fmt: skip
    assert "result" in kinds and kinds.index("session") < kinds.index("cdr"), kinds
    sessions = [x.body["status"] for x in after if x.method == "PUT" and "/sessions/" in x.path]
    assert sessions == ["ACTIVE", "COMPLETED"] and cdr.body["total_energy"] == 60.0
    wait_for(
        lambda: json.loads(r.cli("list", "--json").splitlines()[0])["pending"] == 0,
        30, "the outbox drained",
    )  # fmt: skip
    assert r.evse("RMA", "RMA-2")["status"] == "AVAILABLE"
    last = [x.body["status"] for x in after if x.method == "PATCH" and x.path.endswith("/RMA-2")]
    assert last[-1] == "AVAILABLE"
    assert not peer.invalid, peer.invalid


def test_cpo_registers_with_an_emsp(roaming: Roaming) -> None:
    r = roaming
    other = EmspPeer(free_port(), accept_token_a="token-a-given-to-us")
    other.up()
    try:
        r.cli("add", "other", "--url", other.versions_url, "--token", "token-a-given-to-us")
        other.wait(lambda x: x.path.endswith("/credentials"), 30, "our credentials")
        assert other.cpo_token  # the token B we gave it

        def state() -> str:
            rows = [json.loads(x) for x in r.cli("list", "--json").splitlines()]
            return str(next(x for x in rows if x["name"] == "other")["state"])

        wait_for(lambda: state() == "registered", 30, "registered with the eMSP")
        # it calls us with the token B we gave it
        status, _, doc = OcpiClient(r.base, other.cpo_token).call("GET", f"/{V}/locations")
        assert status == 200 and doc["status_code"] == 1000
        assert not other.invalid, other.invalid
        # it updates its credentials (PUT: a new token for us to present, a new one for it)
        mine = {
            "token": other.token_b, "url": other.versions_url,
            "roles": [{"role": "EMSP", "business_details": {"name": "Other"}, "party_id": "OTH",
                       "country_code": "DE"}],
        }  # fmt: skip
        status, _, doc = OcpiClient(r.base, other.cpo_token).call("PUT", f"/{V}/credentials", mine)
        assert status == 200 and doc["status_code"] == 1000, doc
        newer = doc["data"]["token"]
        assert newer != other.cpo_token
        status, _, _ = OcpiClient(r.base, other.cpo_token).call("GET", f"/{V}/locations")
        assert status == 401
        wait_for(lambda: "DE-OTH" in r.cli("list"), 10, "the new party listed")
        # and unregisters (DELETE): its token stops working
        status, _, doc = OcpiClient(r.base, newer).call("DELETE", f"/{V}/credentials")
        assert status == 200 and doc["status_code"] == 1000
        status, _, _ = OcpiClient(r.base, newer).call("GET", f"/{V}/locations")
        assert status == 401
        r.cli("remove", "other")
        assert "other" not in r.cli("list")
    finally:
        other.down()


def test_stop_session_ends_a_running_session_with_its_kwh_pushed(registered: Roaming) -> None:
    r, peer = registered, registered.peer
    assert (
        r.command("START_SESSION", start_cmd(peer, "run1", "TOK2", "RMA", "RMA-1"))["result"]
        == "ACCEPTED"
    )
    assert r.result("run1")["result"] == "ACCEPTED"
    active = peer.wait(
        lambda x: x.method == "PUT" and "/sessions/" in x.path
        and x.body.get("status") == "ACTIVE" and x.body["evse_uid"] == "RMA-1",
        30, "the ACTIVE session",
    ).body  # fmt: skip
    sid = active["id"]
    peer.wait(
        lambda x: x.method == "PATCH" and x.path.endswith(f"/sessions/BR/EVC/{sid}")
        and x.body["kwh"] > 0, 30, "the kWh so far",
    )  # fmt: skip
    _, _, doc = r.cpo.call("GET", f"/{V}/sessions")
    assert [s["id"] for s in doc["data"]] == [sid]
    check("Session", doc["data"][0])
    stop = {"response_url": f"{peer.url}/ocpi/{V}/commands/stop1", "session_id": sid}
    assert r.command("STOP_SESSION", stop)["result"] == "ACCEPTED"
    assert r.result("stop1")["result"] == "ACCEPTED"
    cdr = peer.wait(lambda x: x.path.endswith("/cdrs") and x.body["session_id"] == sid, 30).body
    assert 0 < cdr["total_energy"] < 60
    assert not peer.invalid, peer.invalid


def test_an_ocpp_walk_in_with_an_emsp_token_is_that_emsps_session(registered: Roaming) -> None:
    from tests.support.ocpp_sims import sim_loop, write_chargers

    r, peer = registered, registered.peer
    wait_for(
        lambda: "RFID042" in r.tokens("--authorized"), 30, "the RFID token pulled and authorized"
    )
    assert "BAD" not in r.tokens("--authorized")
    chargers = write_chargers(r.tmp / "chargers.toml", ["RMO-1"], lat=-12.5, lon=-38.5)
    idtags = subprocess.run(
        [sys.executable, "-m", "broker", "ocpi", "tokens", "--authorized", "--idtags",
         "--db", str(r.db)], capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert 'id = "RFID042"' in idtags and "BAD" not in idtags
    chargers.write_text(chargers.read_text() + "\n" + idtags)  # the cards the eMSP validated
    ws_port = free_port()
    gw = start(
        [
            "python", "-m", "station", "ocpp", "--chargers", str(chargers), "--host",
            "127.0.0.1", "--port", str(ws_port), "--interval", "0.5",
            "--status-port", str(r.ports.status), "--station-port", str(r.ports.station),
            "--vehicle-port", str(r.ports.vehicle), *r.ports.cred_args("station"),
        ]
    )  # fmt: skip
    try:
        gw.read_until("ocpp gateway ready", timeout=30)
        with sim_loop() as sims:
            sim = sims.add(f"ws://127.0.0.1:{ws_port}/ocpp", "RMO-1", speed=100, meter_every_s=0.1)
            r.wait_status("RMO", "RMO-1", "AVAILABLE")
            assert sims.run(sim.local_start("BAD")) == "Invalid"  # not valid at its eMSP
            assert sims.run(sim.local_start("RFID042")) == "Accepted"
            active = peer.wait(
                lambda x: x.method == "PUT" and "/sessions/" in x.path
                and x.body["cdr_token"]["uid"] == "RFID042",
                30, "the walk-in's session",
            ).body  # fmt: skip
            assert active["auth_method"] == "WHITELIST" and active["cdr_token"]["type"] == "RFID"
            wait_for(lambda: sim.meter_wh > 500, 30, "some energy metered")
            sims.run(sim.end("Local"))
        cdr = peer.wait(
            lambda x: x.path.endswith("/cdrs") and x.body["session_id"] == active["id"], 30
        ).body
        assert cdr["auth_method"] == "WHITELIST" and cdr["cdr_location"]["evse_uid"] == "RMO-1"
        assert not peer.invalid, peer.invalid
    finally:
        gw.stop()


def test_queued_pushes_survive_a_kill9_and_the_cdr_is_sent_once(registered: Roaming) -> None:
    r, peer = registered, registered.peer

    def cdrs_of(uid: str) -> list[dict[str, Any]]:
        _, _, doc = r.cpo.call("GET", f"/{V}/cdrs?limit=1000")
        return [c for c in doc["data"] if c["cdr_token"]["uid"] == uid]

    before = {c["id"] for c in cdrs_of("TOK1")}
    peer.down()
    try:
        assert (
            r.command("START_SESSION", start_cmd(peer, "k1", "TOK1", "RMA", "RMA-2"))["result"]
            == "ACCEPTED"
        )
        wait_for(lambda: len(cdrs_of("TOK1")) > len(before), 30, "the CDR made and queued")
        (new,) = [c for c in cdrs_of("TOK1") if c["id"] not in before]
        assert r.ocpi is not None
        r.ocpi.kill9()
        r.ocpi.stop()  # closes its pipe
        r.start_ocpi()
    finally:
        peer.up()
    peer.wait(lambda x: x.path.endswith("/cdrs") and x.body["id"] == new["id"], 30, "the CDR")
    peer.wait(lambda x: x.path.endswith("/commands/k1"), 30, "the command result")
    wait_for(
        lambda: json.loads(r.cli("list", "--json").splitlines()[0])["pending"] == 0,
        30, "the outbox drained",
    )  # fmt: skip
    sent = peer.got(lambda x: x.path.endswith("/cdrs") and x.body["id"] == new["id"])
    assert len(sent) == 1 and len([c for c in cdrs_of("TOK1") if c["id"] == new["id"]]) == 1


def test_roaming_drivers_register_when_the_broker_requires_it(tmp_path: Path) -> None:
    stations = {"RQA": (-12.27, -38.97, FAST)}
    with roaming_stack(tmp_path, stations, "--vehicle-auth", "required") as r:
        register(r)
        wait_for(lambda: r.cpo.call("GET", f"/{V}/locations/RQA")[0] == 200, 30, "RQA listed")
        r.wait_status("RQA", "RQA", "AVAILABLE")

        def cdrs() -> int:
            return len(r.peer.got(lambda x: x.path.endswith("/cdrs")))

        for n, ref in enumerate(("q1", "q2"), 1):  # registered once, then authenticated
            body = start_cmd(r.peer, ref, "TOK1", "RQA", None)
            assert r.command("START_SESSION", body)["result"] == "ACCEPTED"
            assert r.result(ref)["result"] == "ACCEPTED"
            # (ignored below) mypy cannot type a lambda with a default argument
            wait_for(lambda n=n: cdrs() >= n, 30, f"CDR {n}")  # type: ignore[misc]
        assert "ocpi.NLEMS.TOK1" in r.tokens_of_vehicles()


def test_operator_tariffs_are_served_pushed_and_priced_into_the_cdr(registered: Roaming) -> None:
    r, peer = registered, registered.peer
    tariff = {
        "id": "TOU1", "currency": "BRL",
        "elements": [{"price_components": [
            {"type": "FLAT", "price": 1.5, "step_size": 1},
            {"type": "ENERGY", "price": 1.0, "step_size": 1},
        ]}],
    }  # fmt: skip
    path = r.tmp / "tou1.json"
    path.write_text(json.dumps(tariff))
    ops = ["--history-port", str(r.ports.history), *r.ports.cred_args("operator")]
    for args in (["set", str(path)], ["assign", "TOU1", "--points", "RMA-2"]):
        subprocess.run([sys.executable, "-m", "broker", "tariffs", *args, *ops],
                       capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    pushed = peer.wait(lambda x: x.method == "PUT" and x.path.endswith("/tariffs/BR/EVC/TOU1"))
    assert pushed.body["elements"] == tariff["elements"]
    peer.wait(
        lambda x: x.method == "PUT" and x.path.endswith("/RMA/RMA-2")
        and x.body["connectors"][0]["tariff_ids"] == ["TOU1"], 30, "the EVSE's new tariff",
    )  # fmt: skip
    _, _, doc = r.cpo.call("GET", f"/{V}/tariffs")
    served = {t["id"]: t for t in doc["data"]}
    assert served["TOU1"]["party_id"] == "EVC" and "KWH-2" in served
    for t in doc["data"]:
        check("Tariff", t)
    assert r.evse("RMA", "RMA-1")["connectors"][0]["tariff_ids"] == ["KWH-2"]
    assert (
        r.command("START_SESSION", start_cmd(peer, "tou", "TOK2", "RMA", "RMA-2"))["result"]
        == "ACCEPTED"
    )
    assert r.result("tou")["result"] == "ACCEPTED"
    cdr = peer.wait(
        lambda x: x.path.endswith("/cdrs") and x.body["cdr_location"]["evse_uid"] == "RMA-2"
        and x.body.get("tariffs"), 30, "the tariffed CDR",
    ).body  # fmt: skip
    assert cdr["tariffs"][0]["id"] == "TOU1" and cdr["total_energy"] == 60.0
    assert cdr["total_cost"]["excl_vat"] == 61.5 and cdr["total_fixed_cost"]["excl_vat"] == 1.5
    assert not peer.invalid, peer.invalid
