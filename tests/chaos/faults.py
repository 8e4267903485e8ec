"""The fault injector: a seeded plan of faults (pure) and the docker calls that carry it out.

``plan(seed, seconds, services)`` draws, from the seed alone, when each fault
starts, what it does, to which service and for how long; the same seed and
services give the same plan, so a failed run can be replayed. Kinds:

* ``kill``: ``docker kill -s KILL`` (the process gets SIGKILL, as kill -9), started
  again when the fault ends;
* ``pause``: ``docker pause`` (every process of the container stopped, as SIGSTOP),
  unpaused when it ends;
* ``cut``: ``docker network disconnect`` from the stack's network, connected again
  (with its service name as alias) when it ends;
* ``restart``: ``docker restart`` of a server (NATS, PostgreSQL).

At most two faults are in force at once, never two on one service.
"""

from __future__ import annotations

import math
import random
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    KILL = "kill"
    PAUSE = "pause"
    CUT = "cut"
    RESTART = "restart"


#: which kinds each role of service takes, and how often (relative weights)
ROLES: Mapping[str, Mapping[Kind, int]] = {
    "core": {Kind.KILL: 4, Kind.PAUSE: 1, Kind.CUT: 1},
    "gateway": {Kind.KILL: 3, Kind.PAUSE: 1, Kind.CUT: 1},
    "station": {Kind.KILL: 2, Kind.PAUSE: 1, Kind.CUT: 1},
    "billing": {Kind.KILL: 2, Kind.PAUSE: 1, Kind.CUT: 1},
    "bridge": {Kind.KILL: 2, Kind.PAUSE: 1, Kind.CUT: 1},
    "server": {Kind.RESTART: 2, Kind.PAUSE: 1},
}


def role_of(service: str) -> str | None:
    """The role of a compose service in the chaos run (None: left alone)."""
    if service in ("broker", "broker-ssa"):
        return "core"
    if service.startswith("gateway"):
        return "gateway"
    if service.startswith(("station", "fleet")):
        return "station"
    if service.startswith("billing"):
        return "billing"
    if service.startswith("bridge"):
        return "bridge"
    if service in ("nats", "postgres"):
        return "server"
    return None


@dataclass(frozen=True, slots=True)
class Fault:
    at: float  # seconds after the start of the faults
    kind: Kind
    service: str
    seconds: float  # how long it lasts (kill: down time; restart: 0)

    @property
    def ends(self) -> float:
        return self.at + self.seconds

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kind": str(self.kind)}


def plan(
    seed: int,
    seconds: float,
    services: Sequence[str],
    *,
    gap: tuple[float, float] = (2.0, 6.0),
    length: tuple[float, float] = (1.0, 8.0),
) -> list[Fault]:
    """The faults of a run of ``seconds``, drawn from ``seed`` over ``services``."""
    rng = random.Random(seed)
    targets = sorted(s for s in services if role_of(s) is not None)
    faults: list[Fault] = []
    if not targets:
        return faults
    t = rng.uniform(*gap)
    while t < seconds:
        at = _floor2(t)
        busy = {f.service for f in faults if f.ends > at}
        in_force = sum(1 for f in faults if f.ends > at)
        free = [s for s in targets if s not in busy]
        if in_force < 2 and free:
            service = rng.choice(free)
            kinds = ROLES[role_of(service) or ""]
            kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
            lasts = 0.0 if kind is Kind.RESTART else round(rng.uniform(*length), 2)
            faults.append(Fault(at, kind, service, min(lasts, _floor2(seconds - at))))
        t += rng.uniform(*gap)
    return faults


def _floor2(x: float) -> float:
    return max(0.0, math.floor(x * 100) / 100)


Docker = Callable[[Sequence[str]], None]


def docker_cli(args: Sequence[str]) -> None:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:2])}: {proc.stderr.strip()}")


class Injector:
    """Carries out a plan against containers; ``heal()`` undoes whatever is still in force."""

    def __init__(
        self,
        containers: Mapping[str, str],
        network: str,
        record: Callable[[dict[str, Any]], None],
        docker: Docker = docker_cli,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.containers = containers  # target (service, or service-N of a replica) -> id
        self.aliases = aliases or {}  # target -> its service name on the network
        self.network = network
        self.record = record
        self.docker = docker
        self.in_force: dict[str, Fault] = {}
        self.counts: dict[str, int] = {}

    def begin(self, fault: Fault) -> None:
        cid = self.containers[fault.service]
        match fault.kind:
            case Kind.KILL:
                self.docker(["kill", "-s", "KILL", cid])
            case Kind.PAUSE:
                self.docker(["pause", cid])
            case Kind.CUT:
                self.docker(["network", "disconnect", self.network, cid])
            case Kind.RESTART:
                self.docker(["restart", "-t", "2", cid])
        if fault.kind is not Kind.RESTART:
            self.in_force[fault.service] = fault
        self.counts[fault.kind] = self.counts.get(fault.kind, 0) + 1
        self.record({"kind": "fault", "type": str(fault.kind), "who": fault.service,
                     "data": fault.to_json()})  # fmt: skip

    def end(self, fault: Fault) -> None:
        if self.in_force.get(fault.service) is not fault:
            return
        cid = self.containers[fault.service]
        match fault.kind:
            case Kind.KILL:
                self.docker(["start", cid])
            case Kind.PAUSE:
                self.docker(["unpause", cid])
            case Kind.CUT:
                alias = ["--alias", self.aliases.get(fault.service, fault.service)]
                self.docker(["network", "connect", *alias, self.network, cid])
            case Kind.RESTART:
                pass
        del self.in_force[fault.service]
        self.record({"kind": "heal", "type": str(fault.kind), "who": fault.service})

    def run(self, faults: Sequence[Fault], started: float, stop_at: float) -> None:
        """Carry out ``faults`` (``at`` relative to ``started``, monotonic) until ``stop_at``."""
        steps = sorted(
            [(f.at, 1, f) for f in faults] + [(f.ends, 0, f) for f in faults],
            key=lambda s: (s[0], s[1]),
        )
        for at, begin, fault in steps:
            wait = started + at - time.monotonic()
            if started + at > stop_at:
                break
            if wait > 0:
                time.sleep(wait)
            try:
                (self.begin if begin else self.end)(fault)
            except RuntimeError as exc:
                self.record({"kind": "error", "type": str(fault.kind), "who": fault.service,
                             "data": str(exc)})  # fmt: skip
        self.heal()

    def heal(self) -> None:
        for fault in list(self.in_force.values()):
            try:
                self.end(fault)
            except RuntimeError as exc:
                self.record({"kind": "error", "type": "heal", "who": fault.service,
                             "data": str(exc)})  # fmt: skip
