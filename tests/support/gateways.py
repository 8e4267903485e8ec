"""A core and external vehicle gateways as real processes (``ev-broker gateway``).

:func:`gateway_stack` starts ``ev-broker serve --gateways 0 --gateway-port P`` (the
core, with its own credentials) and N ``ev-broker gateway`` processes sharing one
vehicle port, each with the core's ``gateway`` credential. Everything started is
stopped by pid at the end, also on failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.credentials import provision
from tests.support.procs import (
    BrokerPorts,
    Proc,
    broker_ports,
    free_port,
    start,
    start_broker,
)

GATEWAY_READY = "ev-broker gateway ready"


@dataclass
class GatewayStack:
    ports: BrokerPorts
    db: str
    gateway_port: int
    vehicle_port: int
    core_args: list[str]
    credential: Path
    core: Proc | None = None
    gateways: list[Proc] = field(default_factory=list)

    def start_core(self) -> Proc:
        self.core = start_broker(
            self.ports,
            self.db,
            "--gateways", "0",
            "--gateway-port", str(self.gateway_port),
            *self.core_args,
        )  # fmt: skip
        return self.core

    def start_gateway(self, *extra: str) -> Proc:
        p = self.ports
        proc = start(
            [
                "python", "-m", "broker", "gateway",
                "--core", "127.0.0.1",
                "--host", "127.0.0.1",
                "--vehicle-port", str(self.vehicle_port),
                "--gateway-port", str(self.gateway_port),
                "--events-port", str(p.events),
                "--history-port", str(p.history),
                "--credentials", str(self.credential),
                *extra,
            ]
        )  # fmt: skip
        self.gateways.append(proc)
        proc.read_until(GATEWAY_READY, timeout=20)
        return proc

    def stop(self) -> None:
        for proc in self.gateways:
            proc.stop()
        if self.core is not None:
            self.core.stop()


@contextlib.contextmanager
def gateway_stack(tmp: Path, gateways: int, *core_args: str) -> Iterator[GatewayStack]:
    db = str(tmp / "core.db")
    credential = provision(db, tmp).add("test-gateway", "gateway")  # live from the start
    stack = GatewayStack(broker_ports(), db, free_port(), free_port(), list(core_args), credential)
    try:
        stack.start_core()
        for _ in range(gateways):
            stack.start_gateway()
        yield stack
    finally:
        stack.stop()
