"""ops.run_local: settings from the environment and the process plan (the real runs
of the whole system are in tests/e2e/test_run_local.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ops.run_local import (
    CREDENTIALS,
    ConfigError,
    Ports,
    Settings,
    busy_ports,
    hints,
    last_seq,
    main,
    provision_credentials,
    service_specs,
    settings_from,
    vehicle_spec,
)
from tests.support.procs import free_ports

PORT_VARS = (
    "EV_VEHICLE_PORT",
    "EV_STATUS_PORT",
    "EV_STATION_PORT",
    "EV_EVENTS_PORT",
    "EV_HISTORY_PORT",
    "EV_HTTP_PORT",
)


def test_ports_default_to_the_documented_ones() -> None:
    assert Ports.from_env({}) == Ports(8081, 8082, 5555, 5556, 5557, 8090)


def test_ports_follow_the_environment() -> None:
    env = dict(zip(PORT_VARS, ["9081", "9082", "9555", "9556", "9557", "9090"], strict=True))
    assert Ports.from_env(env) == Ports(9081, 9082, 9555, 9556, 9557, 9090)


@pytest.mark.parametrize(
    ("value", "message"),
    [("abc", "not a port number"), ("0", "outside 1-65535"), ("70000", "outside 1-65535")],
)
def test_bad_port_is_a_clear_error(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Ports.from_env({"EV_HTTP_PORT": value})


def test_ports_must_differ() -> None:
    with pytest.raises(ConfigError, match="must differ"):
        Ports.from_env({"EV_HTTP_PORT": "8081"})


def test_settings_from_env_and_args(tmp_path: Path) -> None:
    env = {"EV_RUN_STATIONS": "3", "EV_RUN_VEHICLES": "0", "EV_RUN_VAR": str(tmp_path)}
    s = settings_from([], env)
    assert (s.stations, s.vehicles, s.var_dir) == (3, 0, tmp_path)
    s = settings_from(["--stations", "5", "--vehicles", "2", "--var", "elsewhere"], env)
    assert (s.stations, s.vehicles, s.var_dir) == (5, 2, Path("elsewhere"))
    with pytest.raises(ConfigError, match="EV_RUN_STATIONS"):
        settings_from([], {"EV_RUN_STATIONS": "many"})
    with pytest.raises(ConfigError, match="--stations"):
        settings_from(["--stations", "0"], {})


def test_plan_passes_every_port_and_keeps_state_in_var(tmp_path: Path) -> None:
    ports = Ports(1001, 1002, 1003, 1004, 1005, 1006)
    s = Settings(ports=ports, var_dir=tmp_path, stations=4, python="py")
    specs = {spec.name: spec for spec in service_specs(s)}
    assert list(specs) == ["broker", "billing", "web", "tail", "stations"]
    broker = specs["broker"].argv
    for flag, port in [
        ("--vehicle-port", 1001),
        ("--status-port", 1002),
        ("--station-port", 1003),
        ("--events-port", 1004),
        ("--history-port", 1005),
        ("--http-port", 1006),
    ]:
        assert broker[broker.index(flag) + 1] == str(port)
    assert broker[broker.index("--db") + 1] == str(tmp_path / "broker.db")
    assert specs["broker"].ready == "ready"
    web = specs["web"].argv
    assert web[web.index("--events-port") + 1] == "1004"
    assert web[web.index("--history-port") + 1] == "1005"
    assert web[web.index("--port") + 1] == "8088"
    assert specs["web"].announce and specs["web"].ready == "web console ready"
    billing = specs["billing"].argv
    assert billing[billing.index("--db") + 1] == str(tmp_path / "billing.db")
    fleet = specs["stations"].argv
    assert fleet[fleet.index("--count") + 1] == "4"
    assert "--center=-12.2664,-38.9663" in fleet
    assert specs["tail"].log is None  # the foreground process
    for name, cred in [("billing", "run-billing"), ("tail", "run-tail"), ("stations", "run-fleet")]:
        argv = specs[name].argv
        assert argv[argv.index("--credentials") + 1] == str(
            tmp_path / "credentials" / f"{cred}.cred"
        )
    assert "--insecure" not in broker
    assert specs["tail"].since_start  # replays from the broker's start: misses nothing
    assert all(spec.log is not None for name, spec in specs.items() if name != "tail")


def test_vehicles_have_stable_ids_and_start_near_the_center(tmp_path: Path) -> None:
    import random

    s = Settings(var_dir=tmp_path, python="py")
    spec = vehicle_spec(s, 2, 7, random.Random(1))
    argv = spec.argv
    assert argv[argv.index("--id") + 1] == "DEMO02"
    assert "drive" in argv
    lat = float(next(a for a in argv if a.startswith("--lat=")).split("=")[1])
    lon = float(next(a for a in argv if a.startswith("--lon=")).split("=")[1])
    assert abs(lat - -12.2664) < 0.05 and abs(lon - -38.9663) < 0.05
    battery = float(argv[argv.index("--battery") + 1])
    target = float(argv[argv.index("--target") + 1])
    assert battery < target


def test_hints_name_the_monitor_and_the_vehicle_with_custom_ports(tmp_path: Path) -> None:
    s = Settings(ports=Ports(9081, 9082, 9555, 9556, 9557, 9090), python="/x/bin/python")
    text = "\n".join(hints(s))
    assert "/x/bin/ev-broker monitor --credentials " in text
    assert "--events-port 9556 --history-port 9557" in text
    assert "/x/bin/ev-vehicle --id ME --port 9081" in text
    default = "\n".join(hints(Settings(python="/x/bin/python")))
    assert "monitor --events-port" not in default


def test_busy_port_is_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        free = free_ports(5)
        ports = Ports(taken, *free)
        assert busy_ports(ports) == [f"{taken} (vehicle, EV_VEHICLE_PORT)"]


def test_last_seq_is_read_from_the_broker_ready_line() -> None:
    line = "ev-broker ready: vehicles tcp 127.0.0.1:8081, http 8090, db var/b.db, last seq 42"
    assert last_seq(line) == 42
    assert last_seq("") == 0  # stopped before the broker was ready


def test_main_refuses_bad_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EV_RUN_VEHICLES", "-1")
    assert main([]) == 2
    assert "EV_RUN_VEHICLES=-1 is outside" in capsys.readouterr().err


def test_credentials_are_issued_once_and_cover_the_fleet(tmp_path: Path) -> None:
    from common.credentials import load_credential

    s = Settings(var_dir=tmp_path, python="py")
    assert sorted(provision_credentials(s)) == sorted(CREDENTIALS)
    assert provision_credentials(s) == []  # a second run reuses them
    fleet = load_credential(tmp_path / "credentials" / "run-fleet.cred")
    assert fleet.role == "station" and fleet.covers("CP0001") and not fleet.covers("XX1")
    assert (tmp_path / "broker.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "credentials" / "run-tail.cred").unlink()  # lost: issued again
    assert provision_credentials(s) == ["run-tail"]


def test_the_demo_tariff_prices_half_the_fleet(tmp_path: Path) -> None:
    from broker.tariffs_cli import apply_offline
    from ops.run_local import DEMO_TARIFF_POINTS, assign_demo_tariff

    s = Settings(var_dir=tmp_path, python="py")
    line = assign_demo_tariff(s)
    assert "demo-tou-idle" in line
    assign_demo_tariff(s)  # a second run replaces it
    listed = apply_offline(str(tmp_path / "broker.db"), {"action": "list"})
    assert [t["id"] for t in listed["tariffs"]] == ["demo-tou-idle"]
    assert listed["assignments"] == [{"points": DEMO_TARIFF_POINTS, "tariff_id": "demo-tou-idle"}]
    dims = {c["type"] for e in listed["tariffs"][0]["elements"] for c in e["price_components"]}
    assert dims == {"FLAT", "ENERGY", "PARKING_TIME"}


def test_the_demo_fleet_is_split_into_two_sites_whose_limits_bind(tmp_path: Path) -> None:
    from ops.run_local import site_commands

    s = Settings(var_dir=tmp_path, python="py", stations=8)
    north, south = site_commands(s)
    assert north[:6] == ["py", "-m", "broker", "sites", "set", "north"]
    assert north[north.index("--limit-kw") + 1] == "40"  # 4 points of 50 kW: it binds
    points = [north[i + 1] for i, a in enumerate(north) if a == "--points"]
    assert points == ["CP0001", "CP0002", "CP0003", "CP0004"]
    assert south[south.index("--points") + 1] == "CP0005"
    assert str(tmp_path / "credentials" / "run-sites.cred") in north
    assert len(site_commands(Settings(var_dir=tmp_path, python="py", stations=1))) == 1
