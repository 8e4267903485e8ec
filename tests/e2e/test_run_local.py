"""ops.run_local for real: the whole system (broker, billing, web console, fleet, a
vehicle, tail) on free ports with state in a temporary folder, stopped with SIGINT or
SIGTERM; it must exit 0 and every process it started must be gone.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Proc, free_ports, start
from tests.unit.test_run_local import PORT_VARS

pytestmark = pytest.mark.e2e


def _env(tmp_path: Path) -> dict[str, str]:
    ports = free_ports(7)
    env = dict(zip(PORT_VARS, map(str, ports[:6]), strict=True))
    env |= {
        "EV_WEB_PORT": str(ports[6]),
        "EV_RUN_STATIONS": "3",
        "EV_RUN_VEHICLES": "1",
        "EV_RUN_VAR": str(tmp_path / "var"),
    }
    return env


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Proc]:
    """``python -m ops.run_local`` on free ports, always stopped afterwards."""
    proc = start([sys.executable, "-m", "ops.run_local"], env=_env(tmp_path))
    try:
        yield proc
    finally:
        proc.stop(timeout=15)


def _pids(proc: Proc) -> list[int]:
    return [int(m) for line in proc.lines for m in re.findall(r"\(pid (\d+)", line)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_whole_system_runs_and_stops_cleanly(system: Proc, sig: signal.Signals) -> None:
    system.read_until("started broker", timeout=10)
    url = system.read_until("web console ready: http://127.0.0.1:", timeout=30)
    assert "/?token=" in url  # a ready-to-open URL
    system.read_until("Ctrl-C stops everything", timeout=30)
    system.read_until("point.registered", timeout=20)
    system.read_until("vehicle DEMO01 trip 1", timeout=20)
    system.read_until("reservation.created", timeout=30)
    pids = _pids(system)
    assert len(pids) == 6  # broker, billing, web, stations, tail, one vehicle
    assert all(_alive(pid) for pid in pids)
    system.signal(sig)
    assert system.popen.wait(timeout=30) == 0
    out = system.drain()
    for name in ("stations", "tail", "web", "billing", "broker"):
        assert re.search(rf"stopped {name} \(pid \d+, exit 0\)", out), out
    assert not [pid for pid in pids if _alive(pid)]


def test_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    env = _env(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(env["EV_HTTP_PORT"])))
        sock.listen()
        proc = start([sys.executable, "-m", "ops.run_local"], env=env)
        try:
            assert proc.popen.wait(timeout=20) == 1
            out = proc.drain()
        finally:
            proc.stop()
    assert "already in use" in out and "EV_HTTP_PORT" in out
    assert not (tmp_path / "var").exists()
