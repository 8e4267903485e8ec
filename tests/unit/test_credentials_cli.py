"""`ev-broker credentials add|ensure|list|revoke`: files, messages and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.credentials_cli import credentials_app
from common.credentials import load_credential

runner = CliRunner()


def _db(tmp_path: Path) -> list[str]:
    return ["--db", str(tmp_path / "broker.db")]


def test_add_writes_the_cred_file_and_records_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        credentials_app,
        ["add", "cp", "--role", "station", "--points", "CP*", *_db(tmp_path), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert result.output == f"credential cp (station) written to {out / 'cp.cred'}\n"
    cred = load_credential(out / "cp.cred")
    assert (cred.name, cred.role, cred.points) == ("cp", "station", "CP*")
    assert (tmp_path / "broker.key").exists()  # made before the first start
    listed = runner.invoke(credentials_app, ["list", "--json", *_db(tmp_path)])
    assert [json.loads(line)["name"] for line in listed.output.splitlines()] == ["cp"]


def test_ensure_keeps_a_live_credential_and_issues_a_lost_one(tmp_path: Path) -> None:
    args = ["ensure", "tail", "--role", "consumer", *_db(tmp_path)]
    path = tmp_path / "tail.cred"
    first = runner.invoke(credentials_app, args)
    assert first.exit_code == 0, first.output
    assert first.output == f"credential tail (consumer) written to {path}\n"
    key = load_credential(path).curve_public
    kept = runner.invoke(credentials_app, args)
    assert kept.exit_code == 0, kept.output
    assert kept.output == f"credential tail (consumer) kept in {path}\n"
    assert load_credential(path).curve_public == key
    path.unlink()
    again = runner.invoke(credentials_app, args)
    assert again.output == f"credential tail (consumer) written to {path}\n"
    assert load_credential(path).curve_public != key


@pytest.mark.parametrize("command", ["add", "ensure"])
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bad name", "--role", "consumer"], "name"),
        (["x", "--role", "admin"], "role"),
        (["x", "--role", "station"], "points"),
    ],
)
def test_a_bad_request_exits_2_with_one_line(
    tmp_path: Path, command: str, args: list[str], needle: str
) -> None:
    result = runner.invoke(credentials_app, [command, *args, *_db(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("ev-broker credentials: ") and needle in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.cred").exists()


def test_revoke_ends_a_credential_once(tmp_path: Path) -> None:
    runner.invoke(credentials_app, ["add", "tail", "--role", "consumer", *_db(tmp_path)])
    assert runner.invoke(credentials_app, ["revoke", "tail", *_db(tmp_path)]).exit_code == 0
    again = runner.invoke(credentials_app, ["revoke", "tail", *_db(tmp_path)])
    assert again.exit_code == 1 and "no live credential named 'tail'" in again.output
