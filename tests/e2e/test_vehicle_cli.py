"""ev-vehicle argument handling and output (Typer CliRunner, real TCP protocol server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.geo import DEMO_CENTER
from tests.support.procs import free_port
from tests.support.vehicle_server import ProtocolServer, server_thread
from vehicle.cli import app, hoist_global_options


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with server_thread() as srv:
        yield srv


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("EV_BROKER", "EV_VEHICLE_PORT", "EV_VEHICLE_ID", "EV_VEHICLE_JSON"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def test_list_as_json_prints_only_the_points(runner: CliRunner, server: ProtocolServer) -> None:
    args = ["--port", str(server.port), "--id", "CAR1", "--json", "list"]
    result = runner.invoke(app, [*args, "--lat", "-12.9", "--lon", "-38.4", "--max-km", "5"])
    assert result.exit_code == 0, result.output
    points = json.loads(result.stdout)
    assert points[0]["id"] == "CP01"
    sent = server.requests[-1]
    assert sent["type"] == "consulta" and sent["data"]["distancia_max"] == 5.0


def test_nearby_table_shows_distance_state_queue_wait_price(
    runner: CliRunner, server: ProtocolServer
) -> None:
    args = ["--port", str(server.port), "--id", "CAR1", "nearby", "--lat", "1", "--lon", "2"]
    result = runner.invoke(app, [*args, "--battery", "12", "--limit", "3"])
    assert result.exit_code == 0, result.output
    for text in ("CP01", "1.234", "disponivel", "0/5", "2.00", "50.0"):
        assert text in result.stdout
    sent = server.requests[-1]["data"]
    assert sent["nivel_bateria"] == 12.0 and sent["limite"] == 3


def test_env_vars_configure_the_global_options(
    runner: CliRunner, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EV_VEHICLE_PORT", str(server.port))
    monkeypatch.setenv("EV_VEHICLE_ID", "ENVCAR")
    monkeypatch.setenv("EV_VEHICLE_JSON", "1")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"reserva": None, "sessao": None}
    assert server.requests[-1]["data"]["id_veiculo"] == "ENVCAR"


def test_position_defaults_to_the_demo_fleet_and_reads_the_environment(
    runner: CliRunner, server: ProtocolServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["--port", str(server.port), "--id", "CAR1", "--json"]
    result = runner.invoke(app, [*base, "nearby"])
    assert result.exit_code == 0, result.output
    sent = server.requests[-1]["data"]
    where = sent["localizacao"]
    assert (where["latitude"], where["longitude"]) == DEMO_CENTER  # where `make run`'s fleet is
    monkeypatch.setenv("EV_VEHICLE_LAT", "1")
    monkeypatch.setenv("EV_VEHICLE_LON", "2")
    monkeypatch.setenv("EV_VEHICLE_MAX_KM", "7")
    result = runner.invoke(app, [*base, "list"])
    assert result.exit_code == 0, result.output
    sent = server.requests[-1]["data"]
    where = sent["localizacao"]
    assert (where["latitude"], where["longitude"], sent["distancia_max"]) == (1.0, 2.0, 7.0)


def test_refused_reservation_exits_1_with_its_code(
    runner: CliRunner, server: ProtocolServer
) -> None:
    base = ["--port", str(server.port), "--id", "CAR1"]
    result = runner.invoke(app, [*base, "reserve", "FULL"])
    assert result.exit_code == 1
    assert "queue_full" in result.stderr and "Queue full" in result.stderr
    result = runner.invoke(app, [*base, "--json", "reserve", "FULL"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": {"code": "queue_full", "message": "Queue full"}}
    result = runner.invoke(app, [*base, "reserve", "CP01", "--eta", "12"])
    assert result.exit_code == 0 and "Reserved CP01" in result.stdout
    assert server.requests[-1]["data"]["tempo_estimado"] == 12.0


def test_arrive_maps_payment_names_and_waits_for_the_bill(
    runner: CliRunner, server: ProtocolServer
) -> None:
    base = ["--port", str(server.port), "--id", "CAR1"]
    args = ["arrive", "CP01", "--battery", "20", "--target", "60"]
    for choice, wire in (("debito", "Débito em conta"), ("credito", "Cartão de crédito")):
        result = runner.invoke(app, [*base, *args, "--payment", choice])
        assert result.exit_code == 0, result.output
        assert server.requests[-1]["data"]["metodo_pagamento"] == wire
    result = runner.invoke(app, [*base, "--json", *args, "--payment", "Pix", "--wait"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["chegada"]["session_id"] == "S1" and out["custo_final"]["cost"] == 48.0
    result = runner.invoke(app, [*base, *args, "--payment", "pix", "--wait"])
    assert result.exit_code == 0 and "R$ 48.00" in result.stdout and "24.000 kWh" in result.stdout


def test_costs_stop_cancel(runner: CliRunner, server: ProtocolServer) -> None:
    base = ["--port", str(server.port), "--id", "CAR1"]
    result = runner.invoke(app, [*base, "costs"])
    assert result.exit_code == 0 and "R$ 48.00" in result.stdout and "S1" in result.stdout
    result = runner.invoke(app, [*base, "stop", "CP01"])
    assert result.exit_code == 1 and "no_session" in result.stderr
    result = runner.invoke(app, [*base, "cancel", "CP01"])
    assert result.exit_code == 0 and "cancelled" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--lat", "1", "--lon"],  # --lon without its value
        ["list", "--lat", "91", "--lon", "0"],
        ["nearby", "--lat", "x", "--lon", "0"],
        ["arrive", "CP01", "--battery", "50", "--target", "40", "--payment", "Pix"],
        ["arrive", "CP01", "--battery", "10", "--target", "40", "--payment", "cash"],
        ["reserve", "CP01", "--eta", "-1"],
        ["--id", "bad id!", "status"],
        ["swarm", "--count", "1", "--duration", "1", "--center", "nowhere"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(app, ["--port", str(free_port()), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_unreachable_broker_exits_3_with_one_line(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--port", str(free_port()), "--id", "CAR1", "costs"])
    assert result.exit_code == 3
    assert result.stderr.count("\n") == 1 and "unreachable" in result.stderr


def test_stable_id_is_generated_once_and_reused(
    runner: CliRunner, server: ProtocolServer, tmp_path: Path
) -> None:
    base = ["--port", str(server.port), "--json"]
    assert runner.invoke(app, [*base, "status"]).exit_code == 0
    assert runner.invoke(app, [*base, "costs"]).exit_code == 0
    stored = (tmp_path / "config" / "evcharge" / "vehicle_id").read_text().strip()
    ids = {r["data"]["id_veiculo"] for r in server.requests}
    assert ids == {stored}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list", "--lat", "1", "--json"], ["--json", "list", "--lat", "1"]),
        (["--port", "9", "costs", "--id", "A", "--broker=h"],
         ["--port", "9", "--id", "A", "--broker=h", "costs"]),
        (["reserve", "CP01", "--eta", "3"], ["reserve", "CP01", "--eta", "3"]),
        (["--json", "status"], ["--json", "status"]),
        (["reserve", "--", "--json"], ["reserve", "--", "--json"]),
        ([], []),
        (["--help"], ["--help"]),
    ],
)  # fmt: skip
def test_global_options_after_the_command_are_hoisted(argv: list[str], expected: list[str]) -> None:
    assert hoist_global_options(argv) == expected


def test_a_malformed_reply_is_one_line_exit_1_not_a_traceback(
    runner: CliRunner, server: ProtocolServer
) -> None:
    args = ["--port", str(server.port), "--id", "WEIRD", "list", "--lat", "1", "--lon", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: internal: unexpected")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
