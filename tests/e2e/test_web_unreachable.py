"""``ev-broker web`` while its broker is unreachable: retries logged once, SIGTERM stops it."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.support.procs import free_ports, running

pytestmark = pytest.mark.e2e

RETRY = "no reply from history"


def test_web_stops_on_sigterm_and_logs_each_retry_once_while_the_broker_is_down() -> None:
    events, history, web = free_ports(3)  # nothing listens on the broker's ports
    args = ["python", "-m", "broker", "web", "--broker", "127.0.0.1"]
    args += ["--events-port", str(events), "--history-port", str(history), "--port", str(web)]
    with running(args) as proc:
        proc.read_until(RETRY, timeout=30)
        proc.read_until(RETRY, timeout=10)  # a second retry: the loop goes on
        t0 = time.monotonic()
        proc.signal(signal.SIGTERM)
        try:
            rc = proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail("ev-broker web ignored SIGTERM while its broker is unreachable")
        elapsed = time.monotonic() - t0
        proc.drain()
    assert rc == 0, proc.lines
    assert elapsed < 2.0, elapsed
    retries = [line for line in proc.lines if RETRY in line]
    stamps = [line.split(" INFO ")[0] for line in retries]
    assert len(retries) >= 2 and len(set(stamps)) == len(stamps), retries  # once per retry
    assert all(" INFO broker.consumers.subscriber: " in line for line in retries), retries
