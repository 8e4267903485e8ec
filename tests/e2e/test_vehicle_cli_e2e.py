"""``python -m vehicle`` as a subprocess against a real broker (and a real station).

Exit codes 0/1/2/3, ``--json`` output, the stable id across commands, and
full trips (``arrive --wait``, ``drive``) with a simulated ``ev-station`` that
charges fast (``--speed``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_vehicle_library import POINTS, FakeStations
from tests.support.procs import ROOT, BrokerPorts, Proc, free_port, running, start

pytestmark = pytest.mark.e2e

#: A whole trip (reserve, drive, charge, bill) takes about 15 s alone; more when loaded.
TRIP_S = 120


class Cli:
    """Runs ``python -m vehicle`` with a private config dir and the broker's port."""

    def __init__(self, port: int, config: Path) -> None:
        self.port = port
        base = {k: v for k, v in os.environ.items() if not k.startswith("EV_")}
        self.env = {**base, "XDG_CONFIG_HOME": str(config), "COLUMNS": "160"}

    def __call__(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vehicle", "--port", str(self.port), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=timeout,
        )

    def json(self, *args: str, timeout: float = 20) -> Any:
        r = self("--json", *args, timeout=timeout)
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)


@pytest.fixture
def cli(broker: tuple[Proc, BrokerPorts], tmp_path: Path) -> Iterator[Cli]:
    _, ports = broker
    with FakeStations(ports, POINTS):
        yield Cli(ports.vehicle, tmp_path / "config")


def test_exit_codes_and_json(cli: Cli) -> None:
    points = cli.json("--id", "E2E1", "list", "--lat", "-12.97", "--lon", "-38.5")
    assert [p["id"] for p in points] == ["VP01", "VP02", "VP03"]
    assert points[0]["distance"] == 0.0 and points[0]["estado"] == "disponivel"
    after = cli(
        "nearby", "--lat", "-12.97", "--lon", "-38.5", "--limit", "2", "--id", "E2E1", "--json"
    )
    assert after.returncode == 0, after.stderr
    nearby = json.loads(after.stdout)
    assert [p["id"] for p in nearby] == ["VP01", "VP02"]
    reserved = cli.json("--id", "E2E1", "reserve", "VP02", "--eta", "5")
    assert reserved["code"] == "reserved" and reserved["vehicle_id"] == "E2E1"
    # exit 1: refused, with the code in JSON and in the one-line message
    refused = cli("--id", "E2E1", "--json", "reserve", "NOPE")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"]["code"] == "unknown_point"
    again = cli("--id", "E2E1", "reserve", "VP01")
    assert again.returncode == 1 and "already_reserved" in again.stderr
    assert "Traceback" not in again.stderr
    # exit 2: usage
    usage = cli("--id", "E2E1", "arrive", "VP02", "--battery", "10", "--target", "50")
    assert usage.returncode == 2 and "--payment" in usage.stderr
    # exit 3: unreachable, one line
    down = subprocess.run(
        [sys.executable, "-m", "vehicle", "--port", str(free_port()), "--id", "X", "status"],
        capture_output=True,
        text=True,
        env=cli.env,
        cwd=ROOT,
        timeout=20,
    )
    assert down.returncode == 3 and down.stderr.count("\n") == 1 and down.stdout == ""
    status = cli.json("--id", "E2E1", "status")
    assert status["reserva"]["id_ponto_recarga"] == "VP02"
    assert cli.json("--id", "E2E1", "cancel", "VP02")["code"] == "cancelled"


def test_stable_id_keeps_the_same_vehicle(cli: Cli) -> None:
    assert cli.json("reserve", "VP03")["code"] == "reserved"
    status = cli.json("status")
    assert status["reserva"]["id_ponto_recarga"] == "VP03"
    assert cli.json("costs")["vehicle_id"] == status["reserva"]["vehicle_id"]


def station_args(ports: BrokerPorts) -> list[str]:
    """A real simulated station ST01 that charges 3000x faster than real time."""
    return ["python", "-m", "station", "run", "--id", "ST01", "--lat", "-12.97", "--lon", "-38.5",
            "--broker", ports.host, "--status-port", str(ports.status),
            "--station-port", str(ports.station), "--interval", "0.3",
            "--speed", "3000"]  # fmt: skip


@pytest.fixture
def station(broker: tuple[Proc, BrokerPorts]) -> Iterator[Proc]:
    with running(station_args(broker[1])) as proc:
        yield proc


def wait_registered(cli: Cli, point: str, station: Proc, timeout: float = 120) -> None:
    """Until the broker lists ``point`` (a loaded machine may take long to start the
    station); fails early when the station process has exited."""
    deadline = time.monotonic() + timeout
    while True:
        r = cli("--json", "--id", "PROBE", "list", "--lat", "-12.97", "--lon", "-38.5")
        if r.returncode == 0 and any(p["id"] == point for p in json.loads(r.stdout)):
            return
        assert station.popen.poll() is None, f"station exited: {station.drain()}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{point} not registered in {timeout} s: {r.stdout}{r.stderr}")
        time.sleep(0.2)


def test_arrive_wait_prints_the_bill_and_costs_show_it(
    broker: tuple[Proc, BrokerPorts], station: Proc, tmp_path: Path
) -> None:
    cli = Cli(broker[1].vehicle, tmp_path / "config")
    wait_registered(cli, "ST01", station)
    args = ["arrive", "ST01", "--battery", "20", "--target", "60", "--payment", "debito", "--wait"]
    out = cli.json("--id", "E2E2", *args, timeout=TRIP_S)
    assert out["chegada"]["code"] == "started"
    bill = out["custo_final"]
    assert bill["session_id"] == out["chegada"]["session_id"]
    assert bill["payment_method"] == "Débito em conta"
    assert bill["energia_kwh"] == pytest.approx(24.0, abs=0.1)
    assert float(bill["cost"]) == pytest.approx(48.0, abs=0.2)
    statement = cli("--id", "E2E2", "costs")
    assert statement.returncode == 0 and bill["session_id"] in statement.stdout


def test_drive_finds_the_station_and_prints_the_bill(
    broker: tuple[Proc, BrokerPorts], station: Proc, tmp_path: Path
) -> None:
    cli = Cli(broker[1].vehicle, tmp_path / "config")
    wait_registered(cli, "ST01", station)
    args = ["drive", "--lat", "-12.975", "--lon", "-38.5", "--speed", "3000"]
    r = cli("--id", "E2E3", *args, timeout=TRIP_S)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Reserved ST01" in r.stdout and "Charging bill" in r.stdout
    assert "R$ 78.00" in r.stdout  # 15% -> 80% of 60 kWh = 39 kWh at R$ 2.00


def test_swarm_reports_throughput_latency_and_codes(cli: Cli) -> None:
    args = ["swarm", "--count", "20", "--duration", "1.5", "--center", "-12.97,-38.5"]
    out = cli.json(*args, "--radius-km", "5", "--seed", "3")
    assert out["connected"] == 20 and out["requests"] > 100
    assert out["throughput_rps"] > 50
    assert 0 < out["latency_ms"]["p50"] <= out["latency_ms"]["p99"] <= out["latency_ms"]["max"]
    assert out["by_type"]["consulta"] > 0 and out["by_type"]["bateria"] > 0
    assert set(out["errors"]) <= {"timeout"}, out["errors"]


def test_long_commands_stop_cleanly_on_sigterm(cli: Cli, tmp_path: Path) -> None:
    args = ["python", "-m", "vehicle", "--port", str(cli.port), "swarm", "--count", "5",
            "--duration", "60", "--mix", "ping"]  # fmt: skip
    proc = start(args, env=cli.env)
    try:
        proc.read_until("rps=", timeout=15)
        began = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.popen.wait(timeout=5)
        assert time.monotonic() - began < 2.0
        assert code == 0
        assert "throughput" in proc.drain()  # the figures so far are still printed
    finally:
        proc.stop()
