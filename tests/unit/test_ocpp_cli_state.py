"""`ev-station ocpp` options and the gateway's state file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.errors import ConfigError
from station.cli import app
from station.ocpp.passwords import verify_password
from station.ocpp.state import GatewayState

runner = CliRunner()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "cannot read"),
        ("[[charger]\n", "not valid TOML"),
        ('[[charger]]\nid = "A"\n', "latitude is missing"),
    ],
)
def test_a_bad_chargers_file_exits_2_with_a_message(
    tmp_path: Path, content: str | None, needle: str
) -> None:
    f = tmp_path / "chargers.toml"
    if content is not None:
        f.write_text(content)
    result = runner.invoke(app, ["ocpp", "--chargers", str(f)])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


def test_cert_without_key_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["ocpp", "--chargers", str(tmp_path / "c.toml"), "--cert", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "--key" in result.output


def test_ocpp_password_prints_a_hash_and_refuses_short_passwords() -> None:
    result = runner.invoke(app, ["ocpp-password", "--iterations", "50"], input="p" * 20 + "\n")
    assert result.exit_code == 0, result.output
    assert verify_password("p" * 20, result.output.strip())
    short = runner.invoke(app, ["ocpp-password"], input="short\n")
    assert short.exit_code == 2 and "16-40" in short.output


def test_state_file_round_trip_and_damage(tmp_path: Path) -> None:
    path = tmp_path / "gw.state.json"
    st = GatewayState(path)
    st.load()  # no file yet: a fresh state
    assert not st.restored
    first = st.new_id()
    st.transactions[f"OC01/{first}"] = {"point_id": "OC01", "session_id": "ses-1"}
    st.completions["ses-0"] = {"type": "session_complete", "session_id": "ses-0"}
    st.save()
    again = GatewayState(path)
    again.load()
    assert again.restored and again.boot_id == st.boot_id
    assert again.new_id() > first  # ids come from blocks recorded before use: never reused
    assert again.transactions == {f"OC01/{first}": {"point_id": "OC01", "session_id": "ses-1"}}
    assert list(again.completions) == ["ses-0"]
    path.write_text(json.dumps({"boot_id": "x"}))
    with pytest.raises(ConfigError, match="damaged"):
        GatewayState(path).load()
