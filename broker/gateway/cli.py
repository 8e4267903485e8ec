"""`ev-broker gateway`: options (each also from ``EV_<OPTION>``), validation, run loop."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from broker.limits import Limits
from broker.serve_options import count, port, seconds
from broker.serve_options import host as read_host
from broker.serve_options import option_info as opt
from common.cli import EXIT_USAGE
from common.errors import ConfigError, EVError
from common.logging_setup import FORMATS, LEVELS, setup_logging

LIMITS = Limits()


GatewayCoreOpt = Annotated[
    str,
    opt("EV_CORE", "Host of the broker core (its gateway, events and history ports).", "HOST"),
]

GatewayCredentialsOpt = Annotated[
    str | None,
    opt("EV_CREDENTIALS", "A `gateway` credential file (none: no CURVE).", "FILE"),
]

GatewayHostOpt = Annotated[str, opt("EV_HOST", "Address of the vehicle port.", "HOST")]

GatewayVehiclePortOpt = Annotated[
    str, opt("EV_VEHICLE_PORT", "TCP port for vehicles (shared: SO_REUSEPORT).", "PORT")
]

GatewayGatewayPortOpt = Annotated[
    str, opt("EV_GATEWAY_PORT", "The core's ZeroMQ port for gateways.", "PORT")
]

GatewayEventsPortOpt = Annotated[
    str, opt("EV_EVENTS_PORT", "The core's ZeroMQ PUB for bus events.", "PORT")
]

GatewayHistoryPortOpt = Annotated[
    str, opt("EV_HISTORY_PORT", "The core's ZeroMQ ROUTER for history.", "PORT")
]

GatewayCoreWaitOpt = Annotated[
    str,
    opt(
        "EV_CORE_WAIT",
        "Seconds a request waits for an absent core before `erro unavailable`.",
        "SECONDS",
    ),
]

GatewayMaxVehicleConnectionsOpt = Annotated[
    str, opt("EV_MAX_VEHICLE_CONNECTIONS", "Open vehicle connections at most.", "N")
]

GatewayIdleTimeoutOpt = Annotated[
    str,
    opt("EV_IDLE_TIMEOUT", "Seconds without a request before a vehicle is closed.", "SECONDS"),
]

GatewayParentPidOpt = Annotated[
    str | None,
    opt(
        "EV_PARENT_PID",
        "Set by `serve --gateways N`: once that process is gone, take no new "
        "connections and exit after the last one closes.",
        "PID",
    ),
]

GatewayLogFormatOpt = Annotated[str, opt("EV_LOG_FORMAT", "Log format: text or json.", "text|json")]

GatewayLogLevelOpt = Annotated[str, opt("EV_LOG_LEVEL", "Log level.", "|".join(LEVELS))]


def gateway(
    core: GatewayCoreOpt,
    credentials: GatewayCredentialsOpt = None,
    host: GatewayHostOpt = "0.0.0.0",
    vehicle_port: GatewayVehiclePortOpt = "8081",
    gateway_port: GatewayGatewayPortOpt = "5558",
    events_port: GatewayEventsPortOpt = "5556",
    history_port: GatewayHistoryPortOpt = "5557",
    core_wait: GatewayCoreWaitOpt = "10",
    max_vehicle_connections: GatewayMaxVehicleConnectionsOpt = str(LIMITS.max_vehicle_connections),
    idle_timeout: GatewayIdleTimeoutOpt = f"{LIMITS.idle_timeout_s:g}",
    parent_pid: GatewayParentPidOpt = None,
    log_format: GatewayLogFormatOpt = "text",
    log_level: GatewayLogLevelOpt = "info",
) -> None:
    """Run a vehicle gateway for the core at --core until SIGINT or SIGTERM."""
    from broker.gateway.app import GatewayConfig
    from common.credentials import load_credential

    try:
        fmt = log_format.strip().lower()
        level = log_level.strip().lower()
        if fmt not in FORMATS or level not in LEVELS:
            raise ConfigError(f"invalid --log-format {log_format!r} or --log-level {log_level!r}")
        cred = load_credential(credentials) if credentials else None
        if cred is not None and cred.role != "gateway":
            raise ConfigError(f"credentials {credentials}: role {cred.role}, not gateway")
        config = GatewayConfig(
            core=read_host("core", core),
            host=read_host("host", host),
            vehicle_port=port("vehicle-port", vehicle_port),
            events_port=port("events-port", events_port),
            history_port=port("history-port", history_port),
            gateway_port=port("gateway-port", gateway_port),
            core_wait_s=seconds("core-wait", core_wait),
            credential=cred,
            limits=Limits(
                max_vehicle_connections=count("max-vehicle-connections", max_vehicle_connections),
                idle_timeout_s=seconds("idle-timeout", idle_timeout),
            ),
            parent_pid=int(parent_pid) if parent_pid else None,
        )
    except (ConfigError, ValueError) as exc:
        message = exc.message if isinstance(exc, EVError) else str(exc)
        typer.echo(f"ev-broker gateway: {message}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    setup_logging(fmt, level)
    raise typer.Exit(run(config))


def run(config: object) -> int:
    from broker.gateway.app import GatewayConfig, serve
    from common.runner import run as run_until_stopped

    assert isinstance(config, GatewayConfig)

    def ready(description: str) -> None:
        print(f"ev-broker gateway ready: {description}", flush=True)

    try:
        return run_until_stopped(lambda stop: serve(config, ready, stop))
    except OSError as exc:
        print(f"ev-broker gateway: cannot bind a socket: {exc}", file=sys.stderr, flush=True)
        return 1
    except EVError as exc:
        print(f"ev-broker gateway: {exc.message}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway)
