"""The containerised stack: health, a full trip, station loss, a network cut, a broker crash.

One stack (its own compose project, network and volumes) serves the scenarios
of this module, in file order; each scenario uses its own stations and
vehicles, and the broker crash comes last. Vehicles run inside the stack: the
trip in a throw-away ``docker-compose run vehicle`` container, the other
commands in one long-lived vehicle container through ``docker exec``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.compose.conftest import LAT, LON, Background, Stack

pytestmark = [pytest.mark.compose, pytest.mark.slow]

ALL_POINTS = ("CP01", "CP02", "CP03", "FS1-0001", "FS1-0002")

# A vehicle that speaks the wire protocol directly: reserves POINT as VEHICLE,
# prints every line the broker sends, and exits 0 once a message of type UNTIL
# arrives (1 after LIMIT seconds without it).
WATCHER = """
import json, socket, sys, time
vid, point, until, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
s = socket.create_connection(("broker", 8081), timeout=10)
req = {"type": "reserva", "data": {"id_veiculo": vid, "id_ponto_recarga": point}}
s.sendall(json.dumps(req).encode() + b"\\n")
buf, end = b"", time.monotonic() + limit
while time.monotonic() < end:
    s.settimeout(max(0.1, end - time.monotonic()))
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        break
    if not chunk:
        break
    buf += chunk
    while b"\\n" in buf:
        line, buf = buf.split(b"\\n", 1)
        print(line.decode(), flush=True)
        if json.loads(line).get("type") == until:
            sys.exit(0)
sys.exit(1)
"""


def wait_until(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def online(stack: Stack, points: tuple[str, ...], timeout: float = 40) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        seen = stack.points()
        ok = all(p in seen and seen[p]["estado"] != "offline" for p in points)
        return seen if ok else None

    # (ignored below) wait_until returns the checker's Any
    return wait_until(check, timeout, f"{points} online")  # type: ignore[no-any-return]


def events(stack: Stack, topic: str, since: int = 0, **match: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in stack.history(since)
        if e["topic"] == topic and all(e["data"].get(k) == v for k, v in match.items())
    ]


def session_of(stack: Stack, vehicle: str) -> dict[str, Any] | None:
    """The vehicle's session, or None while it has none (polled with wait_until)."""
    rc, status = stack.probe("ev-vehicle", "--json", "--id", vehicle, "status", ok=False)
    if (
        rc != 0
        and status is not None
        and status.get("error", {}).get("code") == "already_registered"
    ):
        # The trip in the background registered the id and is about to write its
        # token file: a probe in that window is told already_registered. Ask again.
        return None
    assert rc == 0 and status is not None, f"status of {vehicle}: exit {rc}, {status}"
    # (ignored below) a decoded JSON reply is Any
    return status.get("sessao")  # type: ignore[no-any-return]


def session_started(stack: Stack, vehicle: str, point: str, trip: Background) -> dict[str, Any]:
    """The session the background ``trip`` of ``vehicle`` starts (a loaded machine's
    minute); a trip that never gets there fails with its own output."""
    try:
        found: dict[str, Any] = wait_until(
            lambda: session_of(stack, vehicle), 60, f"{vehicle}'s session at {point}"
        )
        return found
    except AssertionError as e:
        raise AssertionError(f"{e}; the trip said: {trip.text()[-1500:]}") from None


@pytest.fixture
def background(stack: Stack) -> Iterator[Callable[..., Background]]:
    """Start commands in the probe container in the background; stop them afterwards."""
    started: list[Background] = []

    def run(*args: str) -> Background:
        bg = stack.probe_background(*args)
        started.append(bg)
        return bg

    try:
        yield run
    finally:
        for bg in started:
            bg.stop()


def test_stack_is_up_healthy_and_runs_as_non_root(stack: Stack) -> None:
    assert stack.healthz() == 200
    assert stack.state("broker") == "running/healthy"
    seen = online(stack, ALL_POINTS)
    for service in ("billing", "station1", "station2", "station3", "fleet", "tail"):
        stack.wait_healthy(service)  # each holds its connection to the broker
    assert seen["CP02"]["potencia_kw"] == 22.0 and seen["CP03"]["preco_kwh"] == 2.5
    assert stack.docker("exec", stack.container("broker"), "id", "-u").strip() == "10001"
    # the tail prints the bus (the list requests above connect vehicle LISTER)
    assert "vehicle_id=LISTER" in stack.logs("tail", tail="all")


# Reads the web console's point list inside the stack: with the token, and without it.
WEB_PROBE = """
import json, sys, urllib.error, urllib.request
def get(headers):
    req = urllib.request.Request("http://web:8088/api/points", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None
code, points = get({"Authorization": "Bearer " + sys.argv[1]})
refused, _ = get({})
print(json.dumps({"code": code, "refused": refused, "points": {p["id"]: p for p in points or []}}))
"""


def test_web_console_serves_the_points_to_its_token_only(stack: Stack) -> None:
    stack.wait_healthy("web")  # following the bus

    def listed() -> dict[str, Any] | None:
        seen = stack.python(WEB_PROBE, "compose-web-token")
        ok = seen["code"] == 200 and all(
            p in seen["points"] and seen["points"][p]["online"] for p in ALL_POINTS
        )
        return seen if ok else None

    seen = wait_until(listed, 40, "the web console listing every point online")
    assert seen["refused"] == 401
    assert "web console ready" in stack.logs("web", tail="all")


def test_vehicle_container_completes_a_trip_and_billing_agrees(stack: Stack) -> None:
    code, bill = stack.vehicle(
        "TRIP1", "drive", f"--lat={LAT - 0.004}", f"--lon={LON - 0.004}",
        "--battery", "20", "--target", "40", "--capacity-kwh", "10",
        timeout=120,
    )  # fmt: skip
    assert code == 0
    assert bill["vehicle_id"] == "TRIP1"
    assert bill["energia_kwh"] == pytest.approx(2.0)
    price = Decimal(str(stack.points()[bill["id_ponto_recarga"]]["preco_kwh"]))
    assert Decimal(str(bill["cost"])) == (Decimal("2.0") * price).quantize(Decimal("0.01"))
    _, statement = stack.probe("ev-vehicle", "--json", "--id", "TRIP1", "costs")
    assert [s["session_id"] for s in statement["sessoes"]] == [bill["session_id"]]
    assert Decimal(str(statement["total"])) == Decimal(str(bill["cost"]))
    completed = events(stack, "charging.completed", session_id=bill["session_id"])
    assert len(completed) == 1
    stack.wait_reconciled()


def test_killed_station_goes_offline_and_its_vehicles_are_told(
    stack: Stack, background: Callable[..., Background]
) -> None:
    online(stack, ("CP01",))
    # K1 charges at CP01 (a long session); K2 waits in CP01's queue, connected.
    k1 = background(
        "ev-vehicle", "--json", "--id", "K1", "arrive", "CP01", "--battery", "10",
        "--target", "90", "--payment", "Pix", "--capacity-kwh", "500", "--wait",
    )  # fmt: skip
    session = session_started(stack, "K1", "CP01", k1)
    k2 = background("python3", "-c", WATCHER, "K2", "CP01", "reserva_cancelada", "90")
    k2.wait_for(lambda line: '"code": "reserved"' in line or '"code":"reserved"' in line, 20)
    mark = stack.history()[-1]["seq"]

    stack.docker("kill", stack.container("station1"))
    killed_at = time.monotonic()
    stack.wait_point("CP01", lambda p: p["estado"] == "offline", 20, "offline")

    # After the grace period (15 s): K2's reservation is cancelled and K2 is told ...
    line = k2.wait_for(lambda ln: "reserva_cancelada" in ln, 60)
    push = json.loads(line)
    assert push["data"]["id_ponto_recarga"] == "CP01"
    assert push["data"]["motivo"] == "point_offline"
    assert time.monotonic() - killed_at >= 12  # not before the grace period
    # ... and K1's session is closed as a fault and billed, and K1 gets its bill.
    assert k1.wait(60) == 0, k1.text()
    result = json.loads(k1.lines[-1])
    assert result["custo_final"]["session_id"] == session["session_id"]
    completed = events(stack, "charging.completed", mark, session_id=session["session_id"])
    assert len(completed) == 1 and completed[0]["data"]["reason"] == "fault"
    assert events(stack, "point.offline", mark, point_id="CP01")
    cancelled = events(stack, "reservation.cancelled", mark, vehicle_id="K2")
    assert len(cancelled) == 1
    _, status = stack.probe("ev-vehicle", "--json", "--id", "K2", "status")
    assert status["reserva"] is None
    stack.wait_reconciled()

    stack.compose("start", "station1")
    online(stack, ("CP01",))


def test_station_cut_off_the_network_comes_back_and_bills_once(
    stack: Stack, background: Callable[..., Background]
) -> None:
    online(stack, ("CP02",))
    # About 8 real seconds of charging at 22 kW (speed 60): 3 kWh.
    p1 = background(
        "ev-vehicle", "--json", "--id", "P1", "arrive", "CP02", "--battery", "10",
        "--target", "40", "--payment", "Pix", "--capacity-kwh", "10", "--wait",
    )  # fmt: skip
    session = session_started(stack, "P1", "CP02", p1)
    mark = stack.history()[-1]["seq"]
    network, station2 = f"{stack.project}_evnet", stack.container("station2")

    stack.docker("network", "disconnect", network, station2)
    try:
        stack.wait_point("CP02", lambda p: p["estado"] == "offline", 20, "offline")
    finally:
        stack.docker("network", "connect", "--alias", "station2", network, station2)
    online(stack, ("CP02",), timeout=30)

    assert p1.wait(60) == 0, p1.text()
    bill = json.loads(p1.lines[-1])["custo_final"]
    assert bill["session_id"] == session["session_id"]
    assert bill["energia_kwh"] == pytest.approx(3.0, abs=0.01)
    wait_until(lambda: events(stack, "point.online", mark, point_id="CP02"), 10, "CP02 back online")
    assert events(stack, "point.offline", mark, point_id="CP02")
    time.sleep(3)  # a resent session_complete would arrive within 2 s
    assert len(events(stack, "charging.completed", mark, session_id=bill["session_id"])) == 1
    _, statement = stack.probe("ev-vehicle", "--json", "--id", "P1", "costs")
    assert [s["session_id"] for s in statement["sessoes"]] == [bill["session_id"]]
    stack.wait_reconciled()


def test_a_station_without_credentials_cannot_register_one_with_them_charges(
    stack: Stack,
) -> None:
    # the station1 service as it is, but with another id and no credentials file
    stack.compose(
        "run", "-d", "--no-deps", "--name", f"{stack.project}_nocred", "-e", "EV_ID=NOCRED1",
        "-e", "EV_CREDENTIALS=", "station1",
    )  # fmt: skip
    try:
        wait_until(
            lambda: (
                'evcharge_rejected_total{edge="stations",reason="handshake_failed"}'
                in stack.metrics()
            ),
            30,
            "the broker refusing the station without credentials",
        )
        time.sleep(2)  # it keeps trying meanwhile
        assert "NOCRED1" not in stack.points()
        assert not events(stack, "point.registered", point_id="NOCRED1")
    finally:
        stack.docker("rm", "-f", f"{stack.project}_nocred")
    # with its credential, station1 (CP01) takes a session and the bill reaches billing
    online(stack, ("CP01",))
    _, reply = stack.probe(
        "ev-vehicle", "--json", "--id", "SEC1", "arrive", "CP01", "--battery", "20",
        "--target", "30", "--payment", "Pix", "--capacity-kwh", "10", "--wait", timeout=120,
    )  # fmt: skip
    bill = reply["custo_final"]
    assert bill["id_ponto_recarga"] == "CP01" and bill["energia_kwh"] == pytest.approx(1.0)
    stack.wait_reconciled()
    ledger = stack.compose(
        "exec", "-T", "billing", "ev-broker", "billing", "report", "--vehicle", "SEC1",
        "--format", "json",
    ).stdout  # fmt: skip
    assert bill["session_id"] in ledger


def test_fleet_scales_to_three_with_distinct_ids_kept_across_a_restart(stack: Stack) -> None:
    stack.compose("up", "-d", "--no-recreate", "--scale", "fleet=3", "fleet", timeout=240)
    fleet_ids = tuple(f"FS{r}-000{n}" for r in (1, 2, 3) for n in (1, 2))
    seen = online(stack, fleet_ids, timeout=60)
    assert sorted(p for p in seen if p.startswith("FS")) == sorted(fleet_ids)
    # three replicas at distinct places: no two fleets report the same station
    assert len({(seen[p]["latitude"], seen[p]["longitude"], p) for p in fleet_ids}) == 6
    containers = stack.compose("ps", "-q", "fleet").stdout.split()
    assert len(containers) == 3
    names = {
        stack.docker("inspect", "--format", "{{.Name}}", c).strip().lstrip("/"): c
        for c in containers
    }
    second = next(c for name, c in names.items() if name.endswith(("_2", "-2")))
    mark = stack.history()[-1]["seq"]

    # stopped long enough to be seen offline (a quick restart can fall inside the
    # offline window and publish nothing), then started: the same ids come back
    stack.docker("stop", "--time", "2", second)
    wait_until(
        lambda: events(stack, "point.offline", mark, point_id="FS2-0001"), 60, "FS2-0001 offline"
    )
    stack.docker("start", second)
    wait_until(
        lambda: events(stack, "point.online", mark, point_id="FS2-0001"), 60, "FS2-0001 back"
    )
    seen = online(stack, fleet_ids, timeout=60)
    assert sorted(p for p in seen if p.startswith("FS")) == sorted(fleet_ids)
    for container in containers:  # every replica holds its connection to the broker
        wait_until(
            lambda c=container: (
                # (ignored below) the helper's overloads do not cover this call shape
                stack.docker(  # type: ignore[misc]
                    "inspect", "--format", "{{.State.Health.Status}}", c
                ).strip()
                == "healthy"
            ),
            60,
            f"fleet container {container[:12]} healthy",
        )
    stack.compose("up", "-d", "--no-recreate", "--scale", "fleet=1", "fleet", timeout=240)
    assert len(stack.compose("ps", "-q", "fleet").stdout.split()) == 1


def test_ocpp_chargers_charge_and_bill_through_the_gateway(stack: Stack) -> None:
    stack.wait_healthy("ocpp-gateway")  # connected to the broker
    stack.wait_healthy("ocpp-chargers")  # connected to the gateway
    seen = online(stack, ("OC01", "OC02"))
    assert seen["OC01"]["preco_kwh"] == 1.9 and seen["OC02"]["potencia_kw"] == 11.0
    # 20 -> 40 % of 10 kWh: the gateway stops the charger once its meter shows 2 kWh
    _, out = stack.probe(
        "ev-vehicle", "--json", "--id", "OCPPTRIP", "arrive", "OC01", "--battery", "20",
        "--target", "40", "--payment", "Pix", "--capacity-kwh", "10", "--wait",
        timeout=120,
    )  # fmt: skip
    bill = out["custo_final"]
    assert 2.0 <= bill["energia_kwh"] < 3.0  # metered: the target plus the last meter step
    energy = Decimal(str(bill["energia_kwh"]))
    assert Decimal(str(bill["cost"])) == (energy * Decimal("1.90")).quantize(Decimal("0.01"))
    completed = events(stack, "charging.completed", session_id=bill["session_id"])
    assert len(completed) == 1 and completed[0]["data"]["point_id"] == "OC01"
    stack.wait_reconciled()


def test_broker_crash_and_restart_keeps_state_and_everyone_reconnects(stack: Stack) -> None:
    online(stack, ("CP03",))
    _, reply = stack.probe("ev-vehicle", "--json", "--id", "R1", "reserve", "CP03", "--eta", "60")
    assert reply["code"] == "reserved"
    _, status_before = stack.probe("ev-vehicle", "--json", "--id", "R1", "status")
    _, costs_before = stack.probe("ev-vehicle", "--json", "--id", "TRIP1", "costs")
    history_before = stack.history()
    last_seq = history_before[-1]["seq"]

    stack.docker("kill", stack.container("broker"))
    assert stack.state("broker").startswith("exited")
    stack.compose("start", "broker")
    stack.wait_healthy("broker")

    # confirmed reservations and accounts survive
    _, status_after = stack.probe("ev-vehicle", "--json", "--id", "R1", "status")
    assert status_after["reserva"] is not None
    assert status_after["reserva"] == status_before["reserva"] or (
        status_after["reserva"].get("reservation_id")
        == status_before["reserva"].get("reservation_id")
    )
    _, costs_after = stack.probe("ev-vehicle", "--json", "--id", "TRIP1", "costs")
    assert costs_after == costs_before
    # the event sequence continues without a gap, and the old events are unchanged
    history_after = stack.history()
    seqs = [e["seq"] for e in history_after]
    assert seqs == list(range(1, len(seqs) + 1))
    assert history_after[: len(history_before)] == history_before
    assert any(e["topic"] == "broker.started" for e in history_after if e["seq"] > last_seq)

    # stations come back by themselves ...
    online(stack, ALL_POINTS, timeout=60)
    # ... and so does billing: a new trip after the restart reaches the ledger
    _, bill = stack.probe(
        "ev-vehicle", "--json", "--id", "TRIP2", "drive", f"--lat={LAT - 0.004}",
        f"--lon={LON - 0.004}", "--battery", "30", "--target", "40", "--capacity-kwh", "10",
        timeout=120,
    )  # fmt: skip
    assert bill["vehicle_id"] == "TRIP2"
    reconciled = stack.wait_reconciled(timeout=30)
    assert reconciled is not None
    assert stack.state("billing").startswith("running")
