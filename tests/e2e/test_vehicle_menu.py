"""The interactive menu, driven for real through a pseudo-terminal (pexpect)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.e2e.test_vehicle_cli_e2e import station_args
from tests.e2e.test_vehicle_library import POINTS, FakeStations
from tests.support.procs import ROOT, BrokerPorts, Proc, free_port, running
from vehicle.sync_client import SyncVehicleClient

pytestmark = pytest.mark.e2e

DOWN = "\x1b[B"
UP = "\x1b[A"
ENTER = "\r"


def spawn(port: int, tmp_path: Path, *extra: str) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EV_")}
    env.update(
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        TERM="xterm",
        PROMPT_TOOLKIT_NO_CPR="1",
        COLUMNS="120",
        LINES="40",
    )
    args = ["-m", "vehicle", "--port", str(port), *extra]
    return pexpect.spawn(
        sys.executable, args, env=env, cwd=str(ROOT), encoding="utf-8", timeout=10,
        dimensions=(40, 120),
    )  # fmt: skip


def wait_for_point(ports: BrokerPorts, point: str) -> None:
    with SyncVehicleClient(ports.host, ports.vehicle, "PROBE") as c:
        for _ in range(100):
            if any(p["id"] == point for p in c.consulta(-12.97, -38.5)):
                return
            time.sleep(0.05)
    raise AssertionError(f"{point} never registered")


def expect_all(child: pexpect.spawn, patterns: list[str]) -> None:
    """Wait until every pattern was seen, in any order."""
    left = list(patterns)
    while left:
        left.pop(child.expect(left))


@pytest.fixture
def menu(broker: tuple[Proc, BrokerPorts], tmp_path: Path) -> Iterator[pexpect.spawn]:
    _, ports = broker
    with FakeStations(ports, POINTS):
        child = spawn(ports.vehicle, tmp_path, "--id", "MENU1")
        try:
            child.expect("Connected to .* as MENU1")
            child.expect("Vehicle MENU1")
            yield child
        finally:
            if child.isalive():
                child.terminate(force=True)
            child.close()


def test_arrow_keys_list_points_reserve_see_push_and_quit(menu: pexpect.spawn) -> None:
    menu.send(DOWN)  # -> "List points"
    menu.send(ENTER)
    menu.expect("Position LAT,LON")
    menu.send(ENTER)  # accept the default position
    menu.expect("VP01")
    menu.expect("VP03")
    menu.expect("Vehicle MENU1")
    menu.send(DOWN + DOWN)  # -> "Reserve"
    menu.send(ENTER)
    menu.expect("Point id")
    menu.send(ENTER)  # default: the nearest listed point
    menu.expect("Minutes until arrival")
    menu.send("x" + ENTER)  # invalid: re-asked, not fatal
    menu.expect("invalid")
    menu.expect("Minutes until arrival")
    menu.send("\x15" + "3" + ENTER)  # Ctrl-U clears the line
    # the reply and the push (shown while the menu runs) may come in either order
    expect_all(menu, ["Reserved VP01", "Your turn at VP01"])
    menu.expect("Vehicle MENU1")
    menu.send(UP)  # wraps to "Quit"
    menu.send(ENTER)
    menu.expect("bye")
    menu.expect(pexpect.EOF)
    menu.close()
    assert menu.exitstatus == 0


def test_refused_request_is_reported_and_the_menu_goes_on(menu: pexpect.spawn) -> None:
    menu.send("3")  # number shortcut: "Reserve"
    menu.expect("Point id")
    menu.send("NOPE" + ENTER)
    menu.expect("Minutes until arrival")
    menu.send(ENTER)
    menu.expect("refused: unknown_point")
    menu.expect("Vehicle MENU1")
    menu.send("8")  # "Status"
    menu.expect("reservation: none")
    menu.send("9")  # "Quit"
    menu.expect(pexpect.EOF)
    menu.close()
    assert menu.exitstatus == 0


def test_menu_without_broker_exits_3(tmp_path: Path) -> None:
    child = spawn(free_port(), tmp_path, "--id", "MENU2")
    try:
        child.expect("unreachable")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 3


def test_sigterm_ends_the_menu_cleanly(menu: pexpect.spawn) -> None:
    began = time.monotonic()
    menu.kill(signal.SIGTERM)
    menu.expect(pexpect.EOF, timeout=5)
    menu.close()
    assert time.monotonic() - began < 2.0
    assert menu.exitstatus == 0


def test_arrival_with_a_real_station_shows_the_bill_push(
    broker: tuple[Proc, BrokerPorts], tmp_path: Path
) -> None:
    _, ports = broker
    with running(station_args(ports)):
        wait_for_point(ports, "ST01")
        child = spawn(ports.vehicle, tmp_path, "--id", "MENU3")
        try:
            child.expect("Vehicle MENU3")
            child.send("5")  # "Arrival (start charging)"
            child.expect("Point id")
            child.send("ST01" + ENTER)
            child.expect("Battery %")
            child.send(ENTER)  # default 30
            child.expect("Target %")
            child.send(ENTER)  # default 80
            child.expect("Payment method")
            child.send(DOWN + ENTER)  # "Débito em conta"
            expect_all(child, ["started", "Charging at ST01 finished: 30.000 kWh, R\\$ 60.00"])
            child.send("7")  # "Costs"
            child.expect("Cost statement of MENU3")
            child.expect("Débito em conta")
            child.send("9")
            child.expect(pexpect.EOF)
        finally:
            if child.isalive():
                child.terminate(force=True)
            child.close()
    assert child.exitstatus == 0
