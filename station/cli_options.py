"""The options and process plumbing ``ev-station`` and its OCPP commands share.

Every option also reads ``EV_<OPTION_NAME>`` from the environment; options only
the fleet has read ``EV_FLEET_<OPTION_NAME>``.
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Final

import typer
import zmq

from common.cli import LogLevel
from common.credentials import Credential, load_optional
from common.errors import ConfigError
from common.logging_setup import setup_logging

TERM_WAIT_S: Final = 0.5
_KEEP: list[zmq.Context[zmq.Socket[bytes]]] = []


def env(name: str) -> str:
    return f"EV_{name}"


def fleet_env(name: str) -> str:
    """Fleet-only options: ``EV_FLEET_<NAME>`` (``EV_COUNT`` would also be the swarm's)."""
    return f"EV_FLEET_{name}"


Broker = Annotated[str, typer.Option(envvar=env("BROKER"), help="Broker host name or address.")]
StatusPort = Annotated[
    int, typer.Option(envvar=env("STATUS_PORT"), min=1, max=65535, help="Broker UDP status port.")
]
StationPort = Annotated[
    int,
    typer.Option(envvar=env("STATION_PORT"), min=1, max=65535, help="Broker ZeroMQ ROUTER port."),
]
Interval = Annotated[
    float,
    typer.Option(
        envvar=env("INTERVAL"), min=0.05, max=3600.0, help="Seconds between status datagrams."
    ),
]
Dwell = Annotated[
    float,
    typer.Option(
        envvar=env("DWELL"),
        min=0.0,
        max=86400.0,
        help="Seconds the vehicle stays plugged in after charging ends (parking time).",
    ),
]
Speed = Annotated[
    float,
    typer.Option(
        envvar=env("SPEED"), min=0.001, max=1e6, help="Simulated seconds per real second."
    ),
]
PowerKw = Annotated[
    float, typer.Option(envvar=env("POWER_KW"), min=0.1, max=10000.0, help="Rated power, kW.")
]
PriceKwh = Annotated[
    float, typer.Option(envvar=env("PRICE_KWH"), min=0.0, max=1000.0, help="Price per kWh, BRL.")
]
Heartbeat = Annotated[
    float,
    typer.Option(
        envvar=env("HEARTBEAT"), min=0.1, max=60.0, help="Heartbeat period when idle, seconds."
    ),
]
BrokerSilence = Annotated[
    float,
    typer.Option(
        envvar=env("BROKER_SILENCE"),
        min=0.1,
        max=3600.0,
        help="Seconds without a word from the broker before the station re-creates its "
        "ZeroMQ socket and says hello again.",
    ),
]
LogLevelOpt = Annotated[LogLevel, typer.Option(envvar=env("LOG_LEVEL"), help="Log level.")]
FaultAfter = Annotated[
    float | None,
    typer.Option(
        envvar=env("FAULT_AFTER"),
        min=0.0,
        help="Fault injection: go indisponivel this many seconds after start "
        "(a running session ends with reason fault).",
    ),
]
FaultFor = Annotated[
    float | None,
    typer.Option(
        envvar=env("FAULT_FOR"),
        min=0.0,
        help="With --fault-after: clear the fault after this many seconds (default: never).",
    ),
]
Credentials = Annotated[
    str | None,
    typer.Option(
        "--credentials",
        envvar=env("CREDENTIALS"),
        help="A station .cred file covering the point id(s) (needed unless the broker "
        "runs --insecure).",
    ),
]
MuteCommands = Annotated[
    bool,
    typer.Option(
        envvar=env("MUTE_COMMANDS"),
        help="Fault injection: never answer hold/release/start/stop (the broker then "
        "sees the point as unreachable); datagrams and heartbeats continue.",
    ),
]


def setup_text_logging(level: LogLevel) -> None:
    setup_logging("text", getattr(logging, level.value.upper()))


def terminate_context(ctx: zmq.Context[zmq.Socket[bytes]]) -> bool:
    """Terminate the ZeroMQ context, waiting at most ``TERM_WAIT_S``.

    Every socket is already closed with LINGER 0, but tearing down thousands of
    TCP connections in libzmq's I/O thread can take seconds; the process is
    exiting anyway, so it does not wait for that (stop within 2 s). The context
    stays referenced until exit so that its finaliser does not wait either.
    """
    _KEEP.append(ctx)
    done = threading.Thread(target=ctx.term, name="zmq-term", daemon=True)
    done.start()
    done.join(TERM_WAIT_S)
    return not done.is_alive()


def station_credential(path: str | None, point_ids: list[str]) -> Credential | None:
    """The station credential in ``path`` (checked to cover every id), or None without one."""
    try:
        cred = load_optional(path)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message, param_hint="--credentials") from None
    if cred is None:
        logging.getLogger("station").warning(
            "no --credentials: only a broker started with --insecure will accept this station"
        )
        return None
    if cred.role != "station":
        raise typer.BadParameter(
            f"a {cred.role} credential cannot run a station (issue one with --role station)",
            param_hint="--credentials",
        )
    outside = [p for p in point_ids if not cred.covers(p)]
    if outside:
        raise typer.BadParameter(
            f"credential {cred.name!r} covers {cred.points!r}, not {outside[0]!r}",
            param_hint="--credentials",
        )
    return cred
