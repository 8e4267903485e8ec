"""Real processes for end-to-end tests: free ports, start, wait for ready, stop by pid.

Every process started here is stopped by its pid (SIGTERM, then SIGKILL after
a grace period), also when the test fails, through the fixtures that use it.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free on 127.0.0.1 right now (for TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free for both TCP and UDP."""
    ports: set[int] = set()
    while len(ports) < n:
        p = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", p))
        except OSError:
            continue
        ports.add(p)
    return sorted(ports)


@dataclass
class Proc:
    """A child process whose output is captured line by line."""

    args: list[str]
    popen: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    _buf: bytes = b""
    _unread: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_until(self, needle: str, timeout: float = 15.0) -> str:
        """Read output lines until one contains ``needle``; return that line.

        Lines read past the match are kept for the next call, never lost.
        """
        while self._unread:
            line = self._unread.pop(0)
            if needle in line:
                return line
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.popen.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                chunk = os.read(self.popen.stdout.fileno(), 65536)
                if not chunk:
                    break
                self._buf += chunk
                *complete, self._buf = self._buf.split(b"\n")
                found: str | None = None
                for raw in complete:
                    line = raw.decode("utf-8", "replace")
                    self.lines.append(line)
                    if found is None and needle in line:
                        found = line
                    elif found is not None:
                        self._unread.append(line)
                if found is not None:
                    return found
        finally:
            sel.close()
        raise TimeoutError(
            f"{needle!r} not seen from {self.args[:4]} (rc={self.popen.poll()}); "
            f"output so far:\n" + "\n".join(self.lines[-40:])
        )

    def drain(self) -> str:
        """Whatever output is available without blocking (after the process ended)."""
        assert self.popen.stdout is not None
        try:
            rest = self.popen.stdout.read() or b""
        except (OSError, ValueError):
            rest = b""
        text = rest.decode("utf-8", "replace")
        self.lines.extend(text.splitlines())
        return text

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=10)
        if self.popen.stdout is not None:
            with contextlib.suppress(OSError, ValueError):
                self.popen.stdout.close()
        return int(self.popen.returncode)


def start(args: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
    """Start ``args`` with stdout+stderr captured; ``python`` means this interpreter."""
    argv = [sys.executable if a == "python" else a for a in args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=str(cwd or ROOT),
    )
    return Proc(list(argv), popen)


@contextlib.contextmanager
def running(
    args: Sequence[str],
    ready: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> Iterator[Proc]:
    """Start a process, wait for its ``ready`` line, and always stop it afterwards."""
    proc = start(args, env=env)
    try:
        if ready is not None:
            proc.read_until(ready, timeout=timeout)
        yield proc
    finally:
        proc.stop()


@dataclass
class BrokerPorts:
    host: str
    vehicle: int
    status: int
    station: int
    events: int
    history: int
    http: int

    def cli_args(self) -> list[str]:
        return [
            "--host", self.host,
            "--vehicle-port", str(self.vehicle),
            "--status-port", str(self.status),
            "--station-port", str(self.station),
            "--events-port", str(self.events),
            "--history-port", str(self.history),
            "--http-port", str(self.http),
        ]  # fmt: skip


def broker_ports() -> BrokerPorts:
    p = free_ports(6)
    return BrokerPorts("127.0.0.1", *p)


#: What ``ev-broker serve`` prints once every edge listens.
BROKER_READY = "ev-broker ready:"
#: Its message when a port it was given has been taken meanwhile.
PORT_TAKEN = "address already in use"


def start_broker_on_free_ports(ports: BrokerPorts, db: str, *extra: str) -> Proc:
    """:func:`start_broker`; when another process took one of ``ports`` between their
    choice and the broker's bind (the machine is shared), ``ports`` is given fresh free
    ports in place and the broker started again."""
    for attempt in range(3):
        try:
            return start_broker(ports, db, *extra)
        except TimeoutError as exc:
            if PORT_TAKEN not in str(exc) or attempt == 2:
                raise
            fresh = broker_ports()
            ports.vehicle, ports.status, ports.station = fresh.vehicle, fresh.status, fresh.station
            ports.events, ports.history, ports.http = fresh.events, fresh.history, fresh.http
    raise AssertionError("unreachable")


def start_broker(ports: BrokerPorts, db: str, *extra: str) -> Proc:
    """Start ``ev-broker serve`` on ``ports`` with database ``db`` and wait for ``ready``."""
    proc = start(["python", "-m", "broker", "serve", *ports.cli_args(), "--db", db, *extra])
    try:
        # the whole ready line: a bind error says "already in use", which holds "ready"
        proc.read_until(BROKER_READY, timeout=20)
    except BaseException:
        proc.stop()
        raise
    return proc
