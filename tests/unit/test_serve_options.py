"""``ev-broker serve`` options: declared once, read into typed values, bad text refused."""

from __future__ import annotations

import dataclasses
from datetime import UTC

import pytest
from typer.testing import CliRunner

from broker import cli as broker_cli
from broker.app import AppConfig
from broker.core.config import CoreConfig
from broker.core.vehicle_auth import AuthMode
from broker.limits import Limits
from broker.serve_options import LOG_OPTIONS, OPTIONS, app_config, read_all
from common.errors import ConfigError
from common.timeutil import site_zone

DEFAULTS = {name: o.default for name, o in {**OPTIONS, **LOG_OPTIONS}.items()}


def test_the_option_defaults_are_the_configs_defaults() -> None:
    values = read_all(DEFAULTS)
    config = app_config(values, insecure=False, keys=None)
    # the site's zone defaults to the machine's (read at the edge; the core's default is UTC)
    assert str(config.core.tz) == str(site_zone(None))
    config = dataclasses.replace(config, core=dataclasses.replace(config.core, tz=UTC))
    assert config == AppConfig()
    assert config.core == CoreConfig() and config.limits == Limits()
    assert (values["log_format"], values["log_level"]) == ("text", "info")


def test_values_are_typed() -> None:
    values = read_all(
        {**DEFAULTS, "hold_minutes": "1.5", "vehicle_auth": "required", "retain_events": "0.5"}
    )
    config = app_config(values, insecure=True, keys=" k ")
    assert config.core.hold_s == 90.0
    assert config.vehicle_auth is AuthMode.REQUIRED
    assert config.retain_events_s == 43200.0
    assert config.keys == "k" and config.insecure


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("vehicle_port", "70000", "invalid value for --vehicle-port: '70000' (a port number"),
        ("hold_minutes", "-1", "invalid value for --hold-minutes: '-1' (a positive number"),
        ("max_points", "0", "invalid value for --max-points: '0' (a positive integer)"),
        ("log_level", "loud", "invalid value for --log-level: 'loud' (one of debug"),
        ("host", "a b", "invalid value for --host: 'a b' (an IP address or host name)"),
        ("db", " ", "invalid value for --db: empty"),
    ],
)
def test_bad_text_is_one_clear_error(name: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        read_all({**DEFAULTS, name: text})
    assert message in err.value.message


def test_the_command_exits_2_with_one_line() -> None:
    result = CliRunner().invoke(broker_cli.app, ["serve", "--queue-capacity", "x"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "ev-broker serve: invalid value for --queue-capacity: 'x' (an integer 1-10000)"
    )
