"""The command-line contract, checked on all three CLIs at once (common.cli).

Every option reads an environment variable, no variable means two different
things, every ``--help`` lists the exit codes and the choices of its options,
and every program has ``--version`` and shell completion.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import typer.testing
from typer.main import get_command
from typer.testing import CliRunner

from broker import cli as broker_cli
from broker.consumers.billing.ledger import Ledger
from common.cli import NOT_CONFIGURATION, finish, version, walk
from station import cli as station_cli
from vehicle import cli as vehicle_cli

PROGRAMS = {
    "ev-broker": (broker_cli.app, broker_cli.EXIT_CODES),
    "ev-station": (station_cli.app, station_cli.EXIT_CODES),
    "ev-vehicle": (vehicle_cli.app, vehicle_cli.EXIT_CODES),
}
# Settings that mean the same thing in every program that has them.
SHARED = {
    "EV_BROKER", "EV_STATUS_PORT", "EV_STATION_PORT", "EV_EVENTS_PORT", "EV_HISTORY_PORT",
    "EV_VEHICLE_PORT", "EV_LOG_LEVEL", "EV_LOG_FORMAT",
    "EV_CREDENTIALS",  # security.md: the same variable names the .cred file of every program
}  # fmt: skip
runner = CliRunner()


@pytest.fixture(autouse=True)
def _runner_takes_finished_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Typer's CliRunner only takes apps; these tests run the finished click commands."""
    monkeypatch.setattr(
        typer.testing,
        "_get_command",
        lambda app: get_command(app) if isinstance(app, typer.Typer) else app,
    )


def commands() -> list[tuple[str, tuple[str, ...], Any]]:
    out = []
    for prog, (app, codes) in PROGRAMS.items():
        for path, command in walk(finish(app, codes)):
            out.append((prog, path, command))
    return out


def options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option"]


def test_every_option_reads_an_ev_variable() -> None:
    missing = [
        f"{prog} {' '.join(path)} {p.opts[0]}"
        for prog, path, command in commands()
        for p in options(command)
        if p.name not in NOT_CONFIGURATION and not (p.envvar or "").startswith("EV_")
    ]
    assert missing == []


def test_no_variable_means_two_things() -> None:
    users: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for prog, _, command in commands():
        for p in options(command):
            if p.envvar:
                users[p.envvar].add((prog, p.opts[0]))
    clashes = {env: sorted(who) for env, who in users.items() if len(who) > 1 and env not in SHARED}
    assert clashes == {}
    # the examples: one name, one meaning
    assert users["EV_DB"] == {("ev-broker", "--db")}
    assert ("ev-broker", "--db") not in users["EV_BILLING_DB"] or len(users["EV_BILLING_DB"]) == 1
    assert users["EV_ID"] == {("ev-station", "--id")}
    assert users["EV_VEHICLE_ID"] == {("ev-vehicle", "--id")}
    assert users["EV_VEHICLE_PORT"] == {
        ("ev-broker", "--vehicle-port"),  # where the broker listens
        ("ev-vehicle", "--port"),  # where a vehicle connects
        ("ev-station", "--vehicle-port"),  # where the OCPP gateway's walk-ins connect
    }


@pytest.mark.parametrize("prog", PROGRAMS)
def test_every_help_lists_the_exit_codes_and_env_names(prog: str) -> None:
    app, codes = PROGRAMS[prog]
    for path, command in walk(finish(app, codes)):
        result = runner.invoke(command, ["--help"])
        assert result.exit_code == 0, (path, result.output)
        text = " ".join(result.output.split())
        assert "Exit codes: 0 " in text and "2 usage" in text, (prog, path)
        for p in options(command):
            if p.envvar:
                assert p.envvar in text, (prog, path, p.envvar)


@pytest.mark.parametrize(
    ("prog", "path", "choices"),
    [
        ("ev-vehicle", ("arrive",), "Pix|debito|credito"),
        ("ev-vehicle", ("drive",), "Pix|debito|credito"),
        ("ev-vehicle", ("swarm",), "realistic|ping|bateria|consulta"),
        ("ev-broker", ("serve",), "debug|info|warning|error|critical"),
        ("ev-broker", ("serve",), "text|json"),
        ("ev-broker", ("billing", "report"), "table|json|csv"),
        ("ev-broker", ("billing", "reconcile"), "table|json"),
        ("ev-station", ("run",), "debug|info|warning|error|critical"),
    ],
)
def test_help_lists_the_choices(prog: str, path: tuple[str, ...], choices: str) -> None:
    app, codes = PROGRAMS[prog]
    result = runner.invoke(finish(app, codes), [*path, "--help"], env={"COLUMNS": "200"})
    assert choices in result.output


@pytest.mark.parametrize("prog", PROGRAMS)
def test_version_and_completion(prog: str) -> None:
    app, codes = PROGRAMS[prog]
    command = finish(app, codes)
    result = runner.invoke(command, ["--version"], prog_name=prog)
    assert result.exit_code == 0
    assert result.output.strip() == f"{prog} {version()}"
    result = runner.invoke(command, ["--show-completion", "bash"], prog_name=prog)
    assert result.exit_code == 0, result.output
    assert f"_{prog.replace('-', '_').upper()}_COMPLETE" in result.output


@pytest.mark.parametrize("module", ["broker", "station", "vehicle"])
def test_the_installed_programs_answer_version(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ev-{module} {version()}"


def test_billing_db_given_to_the_group_reaches_report(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    Ledger(db).close()
    command = finish(*PROGRAMS["ev-broker"])
    result = runner.invoke(command, ["billing", "--db", str(db), "report", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) is not None
    missing = tmp_path / "none.db"
    result = runner.invoke(command, ["billing", "--db", str(missing), "report"])
    assert result.exit_code == 2 and str(missing) in result.output


def test_reconcile_does_not_read_the_report_format(tmp_path: Path) -> None:
    command = finish(*PROGRAMS["ev-broker"])
    result = runner.invoke(
        command,
        ["billing", "reconcile", "--db", str(tmp_path / "x.db")],
        env={"EV_REPORT_FORMAT": "csv"},
    )
    assert "csv" not in result.output and result.exit_code == 2  # no ledger, not a bad format


def test_docs_list_every_variable() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for prog, path, command in commands():
        for p in options(command):
            if p.envvar:
                assert f"`{p.opts[0]}` {p.envvar}" in text, (prog, path, p.envvar)
