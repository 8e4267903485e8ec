"""``ev-broker tail`` and ``ev-broker monitor`` as real processes against a real broker."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.e2e.test_consumers_billing import (
    FakeStation,
    bus_args,
    charge,
    procs,  # noqa: F401 (fixture)
    stations,  # noqa: F401 (fixture)
)
from tests.support.procs import ROOT, BrokerPorts, Proc, start
from tests.support.raw_clients import wait_for

pytestmark = pytest.mark.e2e


def tail_proc(ports: BrokerPorts, *extra: str) -> Proc:
    return start(["python", "-m", "broker", "tail", *bus_args(ports), *extra])


class Lines:
    """Every output line of a process, read with a buffer kept between calls."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._buf = b""

    def until(self, pred: Callable[[list[str]], bool], timeout: float = 15) -> list[str]:
        out = self.proc.popen.stdout
        assert out is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            while not pred(self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "expected output not seen:\n" + "\n".join(self.lines[-20:])
                    )
                if not sel.select(timeout=left):
                    continue
                chunk = os.read(out.fileno(), 65536)
                if not chunk:
                    raise AssertionError("process closed its output:\n" + "\n".join(self.lines))
                self._buf += chunk
                *done, self._buf = self._buf.split(b"\n")
                self.lines.extend(d.decode() for d in done)
        return self.lines

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def until_event(self, topic: str, session_id: str) -> None:
        def seen(_lines: list[str]) -> bool:
            return any(
                e["topic"] == topic and e["data"].get("session_id") == session_id
                for e in self.json()
            )

        self.until(seen)

    def until_text(self, needle: str) -> str:
        self.until(lambda lines: any(needle in x for x in lines))
        return next(x for x in self.lines if needle in x)


def test_tail_json_with_topic_filters_and_since(
    broker: tuple[Proc, BrokerPorts],
    stations: list[FakeStation],  # noqa: F811
    procs: list[Proc],  # noqa: F811
) -> None:
    _, ports = broker
    first = charge(ports, stations[0], "CAR1")
    # history first (--since 0), then live; only charging.* and broker.* topics
    t = tail_proc(ports, "--since", "0", "--json", "--topic", "charging.", "--topic", "broker.")
    procs.append(t)
    out = Lines(t)
    out.until_event("charging.completed", first)
    second = charge(ports, stations[1], "CAR2")
    out.until_event("charging.completed", second)
    events = out.json()
    topics = {str(e["topic"]) for e in events}
    assert topics <= {"broker.started", "charging.started", "charging.completed"}
    assert {"broker.started", "charging.started", "charging.completed"} <= topics
    seqs = [int(e["seq"]) for e in events]
    assert seqs == sorted(set(seqs)) and seqs[0] == 1
    done = [e for e in events if e["topic"] == "charging.completed"]
    assert {str(e["data"]["session_id"]) for e in done} == {first, second}
    t0 = time.monotonic()
    t.signal(signal.SIGINT)
    assert t.popen.wait(timeout=3) == 0
    assert time.monotonic() - t0 < 2.0


def test_tail_human_lines_live_only(
    broker: tuple[Proc, BrokerPorts],
    stations: list[FakeStation],  # noqa: F811
    procs: list[Proc],  # noqa: F811
) -> None:
    _, ports = broker
    before = charge(ports, stations[1], "CAR0")  # history a live-only tail must not print
    t = tail_proc(ports, "--topic", "charging.completed")
    procs.append(t)
    out = Lines(t)
    # A live-only tail misses what is published before its subscription reaches
    # the bus: complete marker sessions until one is printed, then it listens.
    markers: list[str] = []
    deadline = time.monotonic() + 60
    while not out.lines:
        assert time.monotonic() < deadline, "tail never printed a live event"
        markers.append(charge(ports, stations[1], f"MRK{len(markers)}"))
        try:
            out.until(lambda lines: len(lines) > 0, timeout=3)
        except AssertionError:
            continue
    sid = charge(ports, stations[0], "CAR3")
    line = out.until_text(sid)
    assert line.startswith("#") and " charging.completed " in line
    assert "vehicle_id=CAR3" in line and "point_id=CP01" in line
    assert t.stop() == 0
    assert all("Traceback" not in x for x in out.lines)
    # only charging.completed, live ones in order, no history without --since
    assert all(" charging.completed " in x for x in out.lines), out.lines
    assert not any(before in x for x in out.lines), out.lines
    known = [*markers, sid]
    printed = [next((s for s in known if f"session_id={s}" in x), x) for x in out.lines]
    first = markers.index(printed[0])
    assert printed == [*markers[first:], sid], out.lines


def test_tail_exits_cleanly_on_a_closed_pipe(
    broker: tuple[Proc, BrokerPorts],
    stations: list[FakeStation],  # noqa: F811
) -> None:
    _, ports = broker
    charge(ports, stations[0], "CAR4")
    cmd = " ".join([sys.executable, "-m", "broker", "tail", *bus_args(ports), "--since", "0"])
    res = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd} | head -1"],
        capture_output=True, text=True, timeout=20, cwd=ROOT,
    )  # fmt: skip
    assert res.stdout.startswith("#1 ") and res.stdout.count("\n") == 1
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr


def test_tail_bad_options_exit_2(tmp_path: Path) -> None:
    for args in (["--since", "-1"], ["--events-port", "70000"], ["--bogus"]):
        res = subprocess.run(
            [sys.executable, "-m", "broker", "tail", *args],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert res.returncode == 2, args
        assert "Traceback" not in res.stderr and res.stderr.strip()


@contextlib.contextmanager
def monitor(
    ports: BrokerPorts, rows: int, cols: int, *extra: str, timeout: float = 15
) -> Iterator[pexpect.spawn]:
    """``ev-broker monitor`` in a pseudo-terminal of ``rows`` x ``cols``; killed if left running."""
    child = pexpect.spawn(
        sys.executable, ["-m", "broker", "monitor", *bus_args(ports), *extra],
        cwd=str(ROOT), dimensions=(rows, cols), timeout=timeout, encoding="utf-8",
        codec_errors="replace",
    )  # fmt: skip
    try:
        yield child
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_monitor_shows_points_pages_and_quits(
    broker: tuple[Proc, BrokerPorts],
    stations: list[FakeStation],  # noqa: F811
) -> None:
    _, ports = broker
    wait_for(lambda: True)
    charge(ports, stations[0], "CAR5")
    with monitor(ports, 40, 140, "--page-size", "5") as child:
        child.expect("CP01")
        child.expect("CP02")
        child.expect(r"points (\x1b\[[0-9;]*m)*2 ")  # styles may sit between label and value
        child.expect("page 1/1")
        sid = charge(ports, stations[1], "CAR6")
        child.expect("charging.completed")
        assert sid
        child.send("q")
        child.expect(pexpect.EOF, timeout=5)
        child.close()
        assert child.exitstatus == 0


def test_monitor_on_a_small_terminal_shows_heard_and_the_latest_events(
    broker: tuple[Proc, BrokerPorts],
    stations: list[FakeStation],  # noqa: F811
) -> None:
    _, ports = broker
    with monitor(ports, 24, 100, timeout=20) as child:
        child.expect("latest events")
        child.expect(r"CP01\W.*?\b\d+s\b")  # when the station was last heard, not "-"
        sid = charge(ports, stations[1], "CAR7")
        child.expect("charging.completed")
        assert sid
        child.send("q")
        child.expect(pexpect.EOF, timeout=5)


def test_monitor_stops_on_sigterm_within_2s(
    broker: tuple[Proc, BrokerPorts],
    stations: list[FakeStation],  # noqa: F811
) -> None:
    _, ports = broker
    with monitor(ports, 30, 120) as child:
        child.expect("CP01")
        t0 = time.monotonic()
        child.kill(signal.SIGTERM)
        child.expect(pexpect.EOF, timeout=3)
        child.close()
        assert child.exitstatus == 0
        assert time.monotonic() - t0 < 2.0
