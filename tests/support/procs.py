"""Real processes for end-to-end tests: free ports, start, wait for ready, stop by pid.

Every process started here is stopped by its pid (SIGTERM, then SIGKILL after
a grace period), also when the test fails, through the fixtures that use it.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.credentials import TestCredentials, provision, register, unregister

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
    #: run once the process has stopped (e.g. remove a temporary keys folder)
    after_stop: list[Callable[[], None]] = field(default_factory=list)
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
        while self.after_stop:
            self.after_stop.pop()()
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
    #: the credentials of the broker started on these ports (None: --insecure)
    creds: TestCredentials | None = None

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

    def cred_args(self, role: str = "consumer") -> list[str]:
        """``["--credentials", FILE]`` of this broker's ``role`` credential ([] when insecure)."""
        if self.creds is None:
            return []
        return ["--credentials", str(self.creds.paths[f"test-{role}"])]

    def all(self) -> list[int]:
        return [self.vehicle, self.status, self.station, self.events, self.history, self.http]


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


#: The per-address reservation cap of test brokers (all their clients share 127.0.0.1).
TEST_RESERVATIONS_PER_ADDRESS = 1_000_000


def start_broker(ports: BrokerPorts, db: str, *extra: str, standard_legacy: bool = True) -> Proc:
    """Start ``ev-broker serve`` on ``ports`` with database ``db`` and wait for ``ready``.

    Unless ``extra`` holds ``--insecure``, the broker runs with auth on and its
    credentials are provisioned first (``tests.support.credentials.provision``):
    in ``--keys DIR`` when given, else in the database's folder (a temporary
    folder, removed when the broker stops, for ``:memory:``). They are kept in
    ``ports.creds`` and found by port by the raw clients. ``standard_legacy=False``
    leaves out the legacy-station credential for every point from 127.0.0.1 (tests
    of unsigned datagrams).
    """
    args = list(extra)
    if "--max-reservations-per-address" not in args:
        # every test client comes from 127.0.0.1: the per-address cap (default 8) is
        # tested where a test asks for it, not in every test that queues vehicles
        args += ["--max-reservations-per-address", str(TEST_RESERVATIONS_PER_ADDRESS)]
    if "--max-registrations-per-address" not in args:  # swarms register from one address
        args += ["--max-registrations-per-address", str(TEST_RESERVATIONS_PER_ADDRESS)]
    cleanup: list[Callable[[], None]] = []
    if "--insecure" not in args:
        if "--keys" in args:
            keys = Path(args[args.index("--keys") + 1])
        elif db == ":memory:":
            keys = Path(tempfile.mkdtemp(prefix="evkeys-"))
            cleanup.append(lambda: shutil.rmtree(keys, ignore_errors=True))
            args += ["--keys", str(keys)]
        else:
            keys = Path(db).parent
        ports.creds = provision(db, keys, legacy=standard_legacy)
        register(ports.creds, *ports.all())
        cleanup.append(lambda: unregister(*ports.all()))
    else:
        ports.creds = None
    if "--gateways" not in args:  # the same process layout on every machine (auto
        args += ["--gateways", "0"]  # depends on the cores); gateway tests ask for theirs
    proc = start(["python", "-m", "broker", "serve", *ports.cli_args(), "--db", db, *args])
    proc.after_stop.extend(cleanup)
    try:
        # the whole ready line: a bind error says "already in use", which holds "ready"
        proc.read_until(BROKER_READY, timeout=20)
    except BaseException:
        proc.stop()
        raise
    return proc
