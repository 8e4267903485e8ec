"""`ev-station` option parsing (station.cli): bad options exit 2 with a clear message."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from station.cli import app, center_option

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--id", "CP01", "--lat", "91", "--lon", "0"], "--lat"),
        (["run", "--id", "CP01", "--lat", "0", "--lon", "abc"], "--lon"),
        (["run", "--lat", "0", "--lon", "0"], "--id"),
        (["run", "--id", "has space", "--lat", "0", "--lon", "0"], "--id"),
        (["run", "--id", "CP01", "--lat", "0", "--lon", "0", "--interval", "0"], "--interval"),
        (["run", "--id", "CP01", "--lat", "0", "--lon", "0", "--status-port", "70000"], "port"),
        (["run", "--id", "CP01", "--lat", "0", "--lon", "0", "--log-level", "loud"], "log"),
        (["fleet", "--count", "0"], "--count"),
        (["fleet", "--count", "3", "--center", "north"], "LAT,LON"),
        (["fleet", "--count", "3", "--center", "95,0"], "latitude"),
        (["fleet", "--count", "3", "--prefix", "a b"], "--prefix"),
        (["fly"], "fly"),
    ],
)
def test_bad_options_exit_2_with_a_message(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle.lower() in result.output.lower()
    assert "Traceback" not in result.output


def test_bad_values_from_the_environment_are_reported_too() -> None:
    result = runner.invoke(app, ["run", "--id", "CP01", "--lon", "0"], env={"EV_LAT": "-100"})
    assert result.exit_code == 2
    assert "EV_LAT" in result.output


def test_help_documents_fault_injection() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--fault-after" in result.output and "--mute-commands" in result.output


def test_parse_center() -> None:
    assert center_option("-12.5, -38.25") == (-12.5, -38.25)
