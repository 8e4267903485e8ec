"""Fixtures for the compose tests: the image, one stack per test module, and its teardown.

The image is built (or reused by its input hash) once per session by
``ops.images``: on a machine without a registry the base is built from Debian
packages. Each stack runs under its own project name (so its own network and
volumes), publishes its ports on ephemeral 127.0.0.1 ports, and is always
removed with ``docker-compose down -v --remove-orphans``, also when a test
fails. With ``CI=true`` a missing Docker engine fails the tests; elsewhere they
are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from ops import images

COMPOSE_FILE = images.OPS / "docker-compose.yml"
LAT, LON = -12.2664, -38.9663

# Short windows so the scenarios run in seconds: stations report every 0.5 s, a
# point is offline after 2 s of silence, and its queue is kept for 15 s (room for a loaded machine).
STACK_ENV: Mapping[str, str] = {
    "EV_RESTART": "no",
    "EV_PUBLISH_ADDR": "127.0.0.1",
    "EV_PUBLISH_VEHICLE": "0",
    "EV_PUBLISH_STATUS": "0",
    "EV_PUBLISH_STATION": "0",
    "EV_PUBLISH_EVENTS": "0",
    "EV_PUBLISH_HISTORY": "0",
    "EV_PUBLISH_HTTP": "0",
    "EV_PUBLISH_PROMETHEUS": "0",
    "EV_PUBLISH_OCPP": "0",
    "EV_PUBLISH_WEB": "0",
    "EV_WEB_TOKEN": "compose-web-token",
    "EV_INTERVAL": "0.5",
    "EV_OFFLINE_AFTER": "2",
    "EV_OFFLINE_GRACE": "15",
    "EV_FLEET_COUNT": "2",
    "EV_LOG_LEVEL": "info",
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"compose tests need Docker in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def image() -> str:
    """The evcharge image for this tree (built once, reused by its input hash)."""
    if shutil.which("docker") is None:
        _unavailable("the docker command is not installed")
    if shutil.which("docker-compose") is None:
        _unavailable("the docker-compose command is not installed")
    if not images.docker_available():
        _unavailable("no Docker engine answers")
    try:
        return images.build(os.environ.get("EV_BASE_IMAGE", "auto"), tag_latest=False)
    except images.ImageBuildError as exc:
        pytest.fail(f"image build failed: {exc}")


@pytest.fixture(scope="session")
def prometheus_image(image: str) -> str:
    """The Prometheus image of the observability profile (Debian's package)."""
    try:
        return images.build_prometheus(os.environ.get("EV_BASE_IMAGE", "auto"), tag_latest=False)
    except images.ImageBuildError as exc:
        pytest.fail(f"prometheus image build failed: {exc}")


class Background:
    """A command running in the background whose stdout lines are collected by a thread."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def text(self) -> str:
        return "\n".join(self.lines[-40:])

    def wait_for(self, pred: Callable[[str], bool], timeout: float) -> str:
        """The first output line for which ``pred`` is true (waiting up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no matching line from {self.argv[-6:]} "
                        f"(rc={self.popen.poll()}); output:\n{self.text()}"
                    )
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout: float) -> int:
        rc = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@dataclass
class Stack:
    """One running compose project and the commands the tests need against it."""

    project: str
    env: dict[str, str]
    probe_name: str = ""  # a long-lived vehicle container for quick commands

    # -- plumbing -----------------------------------------------------------------------

    def compose(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = ["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        proc = subprocess.run(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args[:4])} -> exit {proc.returncode}\n"
                f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
            )
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start a compose command in the background (caller must stop it)."""
        argv = ["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        return subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        assert cid, f"no container for service {service}"
        return cid

    def docker(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])}: {proc.stderr.strip()}")
        return proc.stdout

    def state(self, service: str) -> str:
        """``running``, ``exited``, ...; with ``/healthy`` etc. when it has a health check."""
        fmt = "{{.State.Status}}{{if .State.Health}}/{{.State.Health.Status}}{{end}}"
        return self.docker("inspect", "--format", fmt, self.container(service)).strip()

    def wait_healthy(self, service: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.state(service)
            if state == "running/healthy":
                return
            if not state.startswith("running"):
                break
            time.sleep(0.5)
        raise AssertionError(f"{service} is {state!r}, not healthy\n{self.logs(service)}")

    def logs(self, service: str, tail: str = "60") -> str:
        return self.compose("logs", "--no-color", "--tail", tail, service, check=False).stdout

    def published(self, service: str, port: int, proto: str = "tcp") -> tuple[str, int]:
        out = self.compose("port", "--protocol", proto, service, str(port)).stdout.strip()
        host, _, p = out.rpartition(":")
        return host, int(p)

    # -- the programs, run inside the stack -----------------------------------------------

    def vehicle(
        self, vehicle_id: str, *args: str, timeout: float = 60, ok: bool = True
    ) -> tuple[int, Any]:
        """``ev-vehicle --json --id ID ARGS`` in a throw-away container: (exit code, JSON)."""
        proc = self.compose(
            "run", "--rm", "-T", "vehicle", "ev-vehicle", "--json", "--id", vehicle_id, *args,
            timeout=timeout, check=False,
        )  # fmt: skip
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("{", "["))]
        if ok and (proc.returncode != 0 or not lines):
            raise AssertionError(
                f"ev-vehicle {' '.join(args)} -> exit {proc.returncode}\n"
                f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}"
            )
        return proc.returncode, json.loads(lines[-1]) if lines else None

    def start_probe(self) -> None:
        out = self.compose("run", "-d", "vehicle", "sleep", "86400").stdout.strip()
        self.probe_name = out.splitlines()[-1]

    def probe(self, *args: str, timeout: float = 60, ok: bool = True) -> tuple[int, Any]:
        """``docker exec`` ARGS in the probe container: (exit code, last JSON line or None)."""
        proc = subprocess.run(
            ["docker", "exec", self.probe_name, *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("{", "["))]
        if ok and (proc.returncode != 0 or not lines):
            raise AssertionError(
                f"{' '.join(args[:6])} -> exit {proc.returncode}\n"
                f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}"
            )
        return proc.returncode, json.loads(lines[-1]) if lines else None

    def probe_background(self, *args: str) -> Background:
        return Background(["docker", "exec", self.probe_name, *args])

    def python(self, code: str, *args: str, timeout: float = 60) -> Any:
        """Run ``python3 -c CODE ARGS`` in the probe container; its last line as JSON."""
        return self.probe("python3", "-c", code, *args, timeout=timeout)[1]

    def points(self) -> dict[str, dict[str, Any]]:
        """Every point the broker knows, by id (``ev-vehicle list``)."""
        _, data = self.probe("ev-vehicle", "--json", "--id", "LISTER", "list",
                             f"--lat={LAT}", f"--lon={LON}")  # fmt: skip
        return {p["id"]: p for p in data}

    def wait_point(
        self, point: str, pred: Any, timeout: float = 30, what: str = ""
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = self.points().get(point)
            if last is not None and pred(last):
                return last
            time.sleep(0.5)
        raise AssertionError(f"point {point} never became {what}: last seen {last}")

    def healthz(self) -> int:
        host, port = self.published("broker", 8090)
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as resp:
            return int(resp.status)

    def reconcile(self) -> subprocess.CompletedProcess[str]:
        return self.compose(
            "exec", "-T", "billing", "ev-broker", "billing", "reconcile", "--format", "json",
            check=False,
        )  # fmt: skip

    def wait_reconciled(self, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        proc = self.reconcile()
        while proc.returncode != 0 and time.monotonic() < deadline:
            time.sleep(1)
            proc = self.reconcile()
        assert proc.returncode == 0, f"ledger != accounts:\n{proc.stdout}\n{proc.stderr}"
        return json.loads(proc.stdout)

    def history(self, since: int = 0) -> list[dict[str, Any]]:
        """Every bus event with seq > ``since``, from the broker's history port (asked from
        the billing container, with the billing worker's consumer credential)."""
        proc = self.compose(
            "exec", "-T", "billing", "python3", "-c", HISTORY_SCRIPT, str(since), timeout=60
        )
        return list(json.loads(proc.stdout.strip().splitlines()[-1]))

    def metrics(self) -> str:
        host, port = self.published("broker", 8090)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=180, check=False)


# Reads the event history over the broker's ROUTER port (protocol section 5), as the
# consumer named by EV_CREDENTIALS.
HISTORY_SCRIPT = """
import json, os, sys, msgspec, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.RCVTIMEO, 10000)
cred = json.load(open(os.environ["EV_CREDENTIALS"]))
s.setsockopt(zmq.CURVE_SERVERKEY, cred["broker_public"].encode())
s.setsockopt(zmq.CURVE_PUBLICKEY, cred["curve_public"].encode())
s.setsockopt(zmq.CURVE_SECRETKEY, cred["curve_secret"].encode())
s.connect("tcp://broker:5557")
seq, events = int(sys.argv[1]), []
while True:
    s.send(msgspec.msgpack.encode({"op": "since", "seq": seq, "limit": 1000}))
    reply = msgspec.msgpack.decode(s.recv_multipart()[-1])
    events += reply["events"]
    seq = reply["last_seq"] if not reply["events"] else reply["events"][-1]["seq"]
    if not reply["more"]:
        break
print(json.dumps([{"seq": e["seq"], "topic": e["topic"], "data": e["data"]} for e in events],
                 default=str))
"""


def stack_env(image_ref: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The host environment without EV_* (so nothing leaks in), plus the stack's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EV_", "COMPOSE_"))}
    env |= {"EV_IMAGE": image_ref, **STACK_ENV, **extra}
    return env


@contextlib.contextmanager
def running_stack(image_ref: str, services: Sequence[str] = (), **extra: str) -> Iterator[Stack]:
    """A stack under a unique project name, up and healthy; always torn down."""
    project = f"evtest{uuid.uuid4().hex[:10]}"
    stack = Stack(project, stack_env(image_ref, extra))
    try:
        stack.compose("up", "-d", *services, timeout=240)
        stack.wait_healthy("broker")
        stack.start_probe()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def stack(image: str) -> Iterator[Stack]:
    """The whole stack, shared by the scenarios of one module."""
    with running_stack(image) as s:
        yield s
