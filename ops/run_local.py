"""`make run`: the whole system on this machine, in one terminal.

Starts, in order: the broker (SQLite in ``./var``), the billing worker, the
operator web console (its URL, with a token made at start, is printed), a fleet
of simulated stations around Feira de Santana, a few vehicles driving scripted
trips (staggered, each starting a new trip when the last one ended) and, in the
foreground, the event tail. Everything except the tail logs to ``./var/logs``.

Ctrl-C (SIGINT) or SIGTERM stops every process started here, by pid (SIGTERM,
then SIGKILL after a grace period), newest first, and exits 0. If the broker,
the billing worker, the fleet or the tail dies on its own, the rest is stopped
too and the exit code is 1, naming the log to read.

Ports are the defaults of the programs, each overridable by the environment
variable the programs themselves read (``EV_VEHICLE_PORT``, ``EV_STATUS_PORT``,
``EV_STATION_PORT``, ``EV_EVENTS_PORT``, ``EV_HISTORY_PORT``, ``EV_HTTP_PORT``).
The runner passes every setting explicitly, so all processes agree.

The broker runs with authentication on, as everywhere: before starting it the
runner issues the credentials its own processes need (once; later runs reuse
them) into ``./var/credentials`` (:func:`provision_credentials`): a station
credential for the fleet's ``CP*`` points and consumer credentials for the
billing worker, the tail and the monitor.

Once the broker is ready the fleet is split into two sites, ``north`` and
``south`` (:func:`site_commands`, docs/energy.md), each limited to 10 kW per
point, below the points' 50 kW: every session is limited, and sessions on the
same site visibly share its power in the console.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import IO, Final

from common.geo import DEMO_CENTER
from common.ports import (
    EVENTS_PORT,
    HISTORY_PORT,
    HTTP_PORT,
    STATION_PORT,
    STATUS_PORT,
    VEHICLE_PORT,
    WEB_PORT,
)
from station.fleet import station_id

CENTER: Final = DEMO_CENTER  # Feira de Santana, Bahia
BIND_HOST: Final = "127.0.0.1"
STOP_GRACE_S: Final = 5.0
READY_TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.2

PORT_DEFAULTS: Final = {
    "vehicle": ("EV_VEHICLE_PORT", VEHICLE_PORT),
    "status": ("EV_STATUS_PORT", STATUS_PORT),
    "station": ("EV_STATION_PORT", STATION_PORT),
    "events": ("EV_EVENTS_PORT", EVENTS_PORT),
    "history": ("EV_HISTORY_PORT", HISTORY_PORT),
    "http": ("EV_HTTP_PORT", HTTP_PORT),
}


class ConfigError(ValueError):
    """A setting from the environment or the command line is not usable."""


@dataclass(frozen=True)
class Ports:
    """The broker's six ports."""

    vehicle: int = VEHICLE_PORT
    status: int = STATUS_PORT
    station: int = STATION_PORT
    events: int = EVENTS_PORT
    history: int = HISTORY_PORT
    http: int = HTTP_PORT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Ports:
        values: dict[str, int] = {}
        for name, (var, default) in PORT_DEFAULTS.items():
            raw = env.get(var, "").strip()
            if not raw:
                values[name] = default
                continue
            try:
                port = int(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not a port number") from None
            if not 1 <= port <= 65535:
                raise ConfigError(f"{var}={port} is outside 1-65535")
            values[name] = port
        ports = cls(**values)
        seen = list(vars(ports).values())
        if len(set(seen)) != len(seen):
            raise ConfigError(f"the six broker ports must differ: {ports}")
        return ports


@dataclass(frozen=True)
class Settings:
    """What to run."""

    ports: Ports = field(default_factory=Ports)
    var_dir: Path = Path("var")
    stations: int = 8
    vehicles: int = 3
    stagger_s: float = 4.0
    pause_s: float = 5.0
    speed: float = 60.0
    seed: int = 1
    python: str = sys.executable
    web_port: int = WEB_PORT


@dataclass(frozen=True)
class Spec:
    """One process to start: a name, its argv, where its output goes."""

    name: str
    argv: list[str]
    log: Path | None  # None: inherit the terminal (the foreground tail)
    ready: str | None = None  # a line to wait for before starting the next process
    announce: bool = False  # print that ready line (it says where to find the service)
    # replay the bus from the broker's last seq at start (``--since``): a subscription
    # reaches the bus a moment after the process starts, and nothing may be missed
    since_start: bool = False


#: name -> (role, point pattern) of the credentials the runner's processes use.
CREDENTIALS: Final = {
    "run-fleet": ("station", "CP*"),
    "run-billing": ("consumer", None),
    "run-tail": ("consumer", None),
    "run-monitor": ("consumer", None),
    "run-web": ("operator", None),
    "run-sites": ("operator", None),
}

#: The demo's two sites (docs/energy.md): each takes half the fleet and a limit of
#: this many kW per point, below the points' 50 kW, so that sessions share power.
SITE_KW_PER_POINT: Final = 10.0
SITE_NAMES: Final = ("north", "south")


def credential_path(s: Settings, name: str) -> Path:
    return s.var_dir / "credentials" / f"{name}.cred"


def provision_credentials(s: Settings) -> list[str]:
    """Issue the runner's credentials that do not exist yet; the names issued now.

    A credential whose ``.cred`` file is gone is revoked and issued again.
    """
    from broker.credentials import CredentialTable, broker_keys, ensure

    keys = broker_keys(s.var_dir)
    out_dir = credential_path(s, "x").parent
    with CredentialTable(str(s.var_dir / "broker.db")) as table:
        return [
            name
            for name, (role, points) in CREDENTIALS.items()
            if ensure(table, keys, name, role, points, None, out_dir)
        ]


#: the demo's time-of-use tariff with an idle fee, and the fleet points it prices
DEMO_TARIFF: Final = Path(__file__).resolve().parent / "demo_tariff.json"
DEMO_TARIFF_POINTS: Final = "CP000[1-4]"
#: seconds a demo vehicle stays plugged in after charging (the idle fee shows)
DEMO_DWELL_S: Final = 20


def assign_demo_tariff(s: Settings) -> str:
    """Set the demo tariff on the (stopped) broker's database and assign it to half of
    the fleet; the line to print. Re-running replaces it (same id)."""
    from broker.tariffs_cli import apply_offline

    db = str(s.var_dir / "broker.db")
    tariffs = DEMO_TARIFF.read_text(encoding="utf-8")
    apply_offline(db, {"action": "set", "tariffs": tariffs})
    tariff_id = json.loads(tariffs)["id"]
    reply = apply_offline(
        db, {"action": "assign", "tariff_id": tariff_id, "points": DEMO_TARIFF_POINTS}
    )
    if "error" in reply:
        raise RuntimeError(f"demo tariff: {reply['error']}")
    return (
        f"tariff {tariff_id} (start fee, evening peak, idle fee) prices points "
        f"{DEMO_TARIFF_POINTS}; the others bill their preco_kwh"
    )


def service_specs(s: Settings) -> list[Spec]:
    """The long-running processes, in start order (the tail, in the foreground, before the
    stations so that it shows them registering)."""
    p, py, logs = s.ports, s.python, s.var_dir / "logs"
    broker_addr = ["--broker", BIND_HOST]
    bus = ["--events-port", str(p.events), "--history-port", str(p.history)]
    station_ports = ["--status-port", str(p.status), "--station-port", str(p.station)]

    def cred(name: str) -> list[str]:
        return ["--credentials", str(credential_path(s, name))]

    return [
        Spec(
            "broker",
            [
                py, "-m", "broker", "serve", "--host", BIND_HOST,
                "--vehicle-port", str(p.vehicle), "--status-port", str(p.status),
                "--station-port", str(p.station), "--events-port", str(p.events),
                "--history-port", str(p.history), "--http-port", str(p.http),
                "--db", str(s.var_dir / "broker.db"),
            ],
            logs / "broker.log",
            ready="ready",
        ),
        Spec(
            "billing",
            [py, "-m", "broker", "billing", *broker_addr, *bus,
             "--db", str(s.var_dir / "billing.db"), *cred("run-billing")],
            logs / "billing.log",
        ),
        Spec(
            "web",
            [py, "-m", "broker", "web", *broker_addr, *bus, "--host", BIND_HOST,
             "--port", str(s.web_port), *cred("run-web")],
            logs / "web.log",
            ready="web console ready",
            announce=True,
        ),
        Spec("tail", [py, "-m", "broker", "tail", *broker_addr, *bus, *cred("run-tail")], None,
             since_start=True),
        Spec(
            "stations",
            [
                py, "-m", "station", "fleet", "--count", str(s.stations),
                f"--center={CENTER[0]},{CENTER[1]}", "--radius-km", "8", "--prefix", "CP",
                "--seed", str(s.seed), "--speed", str(s.speed), "--dwell", str(DEMO_DWELL_S),
                *broker_addr, *station_ports,
                *cred("run-fleet"),
            ],
            logs / "stations.log",
        ),
    ]  # fmt: skip


def site_commands(s: Settings) -> list[list[str]]:
    """``ev-broker sites set`` for the demo's two sites: the fleet's first half of
    points in one, the rest in the other (one site when the fleet has one station)."""
    ids = [station_id("CP", n) for n in range(1, s.stations + 1)]
    half = max(1, (len(ids) + 1) // 2)
    groups = [g for g in (ids[:half], ids[half:]) if g]
    p = s.ports
    commands = []
    for name, group in zip(SITE_NAMES, groups, strict=False):
        points = [arg for pid in group for arg in ("--points", pid)]
        limit = max(SITE_KW_PER_POINT * len(group), 5.0)
        commands.append(
            [
                s.python, "-m", "broker", "sites", "set", name, "--limit-kw", f"{limit:g}",
                *points, "--broker", BIND_HOST, "--history-port", str(p.history),
                "--credentials", str(credential_path(s, "run-sites")),
            ]
        )  # fmt: skip
    return commands


def vehicle_spec(s: Settings, index: int, trip: int, rng: random.Random) -> Spec:
    """Vehicle ``index`` (1-based) on its ``trip``-th drive: a random start near the center."""
    lat = CENTER[0] + rng.uniform(-0.04, 0.04)
    lon = CENTER[1] + rng.uniform(-0.04, 0.04)
    battery = rng.randint(8, 35)
    target = rng.randint(70, 95)
    vid = f"DEMO{index:02d}"
    argv = [
        s.python, "-m", "vehicle", "--broker", BIND_HOST, "--port", str(s.ports.vehicle),
        "--id", vid, "drive", f"--lat={lat:.5f}", f"--lon={lon:.5f}",
        "--battery", str(battery), "--target", str(target), "--speed", str(s.speed),
    ]  # fmt: skip
    return Spec(f"vehicle {vid} trip {trip}", argv, s.var_dir / "logs" / f"vehicle-{vid}.log")


def hints(s: Settings) -> list[str]:
    """What to type in another terminal to watch or join the system."""
    p = s.ports
    bin_dir = Path(s.python).parent
    mon = [
        str(bin_dir / "ev-broker"),
        "monitor",
        "--credentials",
        str(credential_path(s, "run-monitor")),
    ]
    if (p.events, p.history) != (EVENTS_PORT, HISTORY_PORT):
        mon += ["--events-port", str(p.events), "--history-port", str(p.history)]
    veh = [str(bin_dir / "ev-vehicle"), "--id", "ME"]
    if p.vehicle != VEHICLE_PORT:
        veh += ["--port", str(p.vehicle)]
    return [
        f"live view of all points:   {' '.join(mon)}",
        f"drive a vehicle yourself:  {' '.join(veh)}      (arrow-key menu)",
        f"metrics and health:        http://{BIND_HOST}:{p.http}/metrics  /healthz",
        f"logs:                      {s.var_dir / 'logs'}/",
    ]


def busy_ports(ports: Ports) -> list[str]:
    """The ports that cannot be bound on 127.0.0.1 right now (8082 is UDP, the rest TCP)."""
    busy: list[str] = []
    for name, port in vars(ports).items():
        kind = socket.SOCK_DGRAM if name == "status" else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((BIND_HOST, port))
            except OSError:
                busy.append(f"{port} ({name}, {PORT_DEFAULTS[name][0]})")
    return busy


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM if the runner itself dies (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    spec: Spec
    popen: subprocess.Popen[bytes]
    log_fh: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, grace: float = STOP_GRACE_S) -> int:
        """SIGTERM by pid, wait ``grace`` seconds, then SIGKILL. Returns the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait()
        if self.log_fh is not None:
            self.log_fh.close()
        return self.popen.returncode


def start(spec: Spec, env: Mapping[str, str]) -> Child:
    """Start ``spec`` in its own session (so Ctrl-C reaches only the runner)."""
    log_fh: IO[bytes] | None = None
    if spec.log is not None:
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        log_fh = spec.log.open("ab")
    popen = subprocess.Popen(
        spec.argv,
        stdin=subprocess.DEVNULL,
        stdout=log_fh,
        stderr=subprocess.STDOUT if log_fh is not None else None,
        env=dict(env),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    return Child(spec, popen, log_fh)


def wait_ready(child: Child, timeout: float, stopping: list[bool]) -> str:
    """Wait until ``child``'s log contains its ready line and return that line ("" when
    stopped meanwhile); raise if it exits or times out."""
    assert child.spec.log is not None and child.spec.ready is not None
    start_at = child.spec.log.stat().st_size if child.spec.log.exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping[0]:
        text = child.spec.log.read_bytes()[start_at:].decode("utf-8", "replace")
        if child.spec.ready in text:
            return next(ln for ln in text.splitlines() if child.spec.ready in ln).strip()
        if child.popen.poll() is not None:
            raise RuntimeError(
                f"{child.spec.name} exited with code {child.popen.returncode}; "
                f"last lines of {child.spec.log}:\n{_tail(text)}"
            )
        time.sleep(POLL_S)
    if not stopping[0]:
        raise RuntimeError(
            f"{child.spec.name} not ready after {timeout:.0f} s; see {child.spec.log}"
        )
    return ""


def last_seq(ready_line: str) -> int:
    """The seq of the newest event, from the broker's ready line (``... last seq 42``)."""
    found = re.search(r"last seq (\d+)", ready_line)
    return int(found.group(1)) if found else 0


def _tail(text: str, n: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-n:])


class Runner:
    """Starts the processes, keeps the vehicles driving, stops everything on a signal."""

    def __init__(self, settings: Settings, env: Mapping[str, str], out: IO[str]) -> None:
        self.s = settings
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        self.out = out
        self.services: list[Child] = []
        self.vehicles: dict[int, Child] = {}
        self.next_trip: dict[int, tuple[float, int]] = {}  # index -> (start at, trip number)
        self.rng = random.Random(settings.seed)
        self.stopping = [False]
        self.signal_name = ""

    def say(self, msg: str) -> None:
        print(f"[run] {msg}", file=self.out, flush=True)

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        """Signal handler: only sets a flag; the main loop does the stopping."""
        if not self.stopping[0]:
            self.signal_name = signal.Signals(signum).name
        self.stopping[0] = True

    def run(self) -> int:
        """Run until a signal (exit 0) or until a service dies (exit 1)."""
        self.s.var_dir.mkdir(parents=True, exist_ok=True)
        code = 0
        try:
            code = self._start_and_watch()
        except RuntimeError as exc:
            self.say(f"error: {exc}")
            code = 1
        finally:
            if self.signal_name:
                self.say(f"{self.signal_name}: stopping every process")
            self.stop_all()
        return code

    def _start_and_watch(self) -> int:
        made = provision_credentials(self.s)
        if made:
            self.say(f"issued credentials {', '.join(made)} in {self.s.var_dir / 'credentials'}/")
        self.say(assign_demo_tariff(self.s))
        start_seq = 0
        for spec in service_specs(self.s):
            if self.stopping[0]:
                return 0
            if spec.log is None:
                for line in hints(self.s):
                    self.say(line)
                self.say("Ctrl-C stops everything. Bus events follow:")
            if spec.since_start:
                spec = replace(spec, argv=[*spec.argv, "--since", str(start_seq)])
            child = start(spec, self.env)
            self.services.append(child)
            self.say(
                f"started {spec.name} (pid {child.pid})" + (f", log {spec.log}" if spec.log else "")
            )
            if spec.ready is not None:
                line = wait_ready(child, READY_TIMEOUT_S, self.stopping)
                if spec.announce and line:
                    self.say(line)
                if spec.name == "broker":
                    start_seq = last_seq(line)
                    self._define_sites()
        now = time.monotonic()
        for i in range(1, self.s.vehicles + 1):
            self.next_trip[i] = (now + self.s.stagger_s * i, 1)
        while not self.stopping[0]:
            for child in self.services:
                if child.popen.poll() is not None:
                    where = f"; see {child.spec.log}" if child.spec.log else ""
                    raise RuntimeError(
                        f"{child.spec.name} (pid {child.pid}) exited with code "
                        f"{child.popen.returncode}{where}"
                    )
            self._drive_vehicles(time.monotonic())
            time.sleep(POLL_S)
        return 0

    def _define_sites(self) -> None:
        """Put the demo fleet in two sites whose limits bind (docs/energy.md)."""
        for argv in site_commands(self.s):
            done = subprocess.run(
                argv, env=dict(self.env), capture_output=True, text=True, timeout=60, check=False
            )
            said = (done.stdout or done.stderr).strip()
            if done.returncode != 0:
                raise RuntimeError(f"defining a demo site failed: {said}")
            self.say(said)

    def _drive_vehicles(self, now: float) -> None:
        for i, child in list(self.vehicles.items()):
            if child.popen.poll() is not None:
                child.stop()
                del self.vehicles[i]
                _, trip = self.next_trip[i]
                self.next_trip[i] = (now + self.s.pause_s, trip + 1)
        for i, (when, trip) in self.next_trip.items():
            if i not in self.vehicles and now >= when:
                child = start(vehicle_spec(self.s, i, trip, self.rng), self.env)
                self.vehicles[i] = child
                self.say(f"{child.spec.name} (pid {child.pid}), log {child.spec.log}")

    def stop_all(self) -> None:
        """Stop every child by pid, vehicles first, then services newest first."""
        children = list(self.vehicles.values()) + list(reversed(self.services))
        for child in children:
            rc = child.stop()
            if child in self.services:
                self.say(f"stopped {child.spec.name} (pid {child.pid}, exit {rc})")
        self.vehicles.clear()
        self.services.clear()


def _env_int(env: Mapping[str, str], var: str, default: int, low: int, high: int) -> int:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{var}={value} is outside {low}-{high}")
    return value


def settings_from(argv: list[str] | None, env: Mapping[str, str]) -> Settings:
    """Settings from the command line, falling back to the environment, then defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m ops.run_local",
        description="Run broker, billing, a station fleet, vehicles and the event tail.",
    )
    parser.add_argument("--stations", type=int, help="stations in the fleet (EV_RUN_STATIONS, 8)")
    parser.add_argument("--vehicles", type=int, help="driving vehicles (EV_RUN_VEHICLES, 3)")
    parser.add_argument("--var", type=Path, help="state and logs folder (EV_RUN_VAR, ./var)")
    args = parser.parse_args(argv)
    stations = _env_int(env, "EV_RUN_STATIONS", 8, 1, 10_000)
    vehicles = _env_int(env, "EV_RUN_VEHICLES", 3, 0, 1_000)
    if args.stations is not None:
        if not 1 <= args.stations <= 10_000:
            raise ConfigError("--stations must be 1-10000")
        stations = args.stations
    if args.vehicles is not None:
        if not 0 <= args.vehicles <= 1_000:
            raise ConfigError("--vehicles must be 0-1000")
        vehicles = args.vehicles
    var_dir = args.var or Path(env.get("EV_RUN_VAR", "").strip() or "var")
    web_port = _env_int(env, "EV_WEB_PORT", WEB_PORT, 1, 65535)
    return Settings(
        ports=Ports.from_env(env),
        var_dir=var_dir,
        stations=stations,
        vehicles=vehicles,
        web_port=web_port,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from(argv, os.environ)
    except ConfigError as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 2
    busy = busy_ports(settings.ports)
    if busy:
        print(
            "run: port(s) already in use on 127.0.0.1: " + ", ".join(busy) + ".\n"
            "     Is another broker running? Stop it, or pick other ports with the "
            "variables named above.",
            file=sys.stderr,
        )
        return 1
    runner = Runner(settings, os.environ, sys.stdout)
    signal.signal(signal.SIGINT, runner.request_stop)
    signal.signal(signal.SIGTERM, runner.request_stop)
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
