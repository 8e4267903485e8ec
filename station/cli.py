"""`ev-station`: run one simulated charging station, or a fleet of them (Typer app).

Every option also reads ``EV_<OPTION_NAME>`` from the environment (``EV_ID``,
``EV_LAT``, ``EV_BROKER``...); options only the fleet has read
``EV_FLEET_<OPTION_NAME>`` (``EV_FLEET_COUNT``...). SIGINT and SIGTERM stop cleanly with exit 0.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import Annotated, Final

import typer
import zmq

from common.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, LogLevel, new_app, version_option
from common.cli import run as run_cli
from common.credentials import Credential, load_optional
from common.errors import ConfigError
from common.geo import parse_center
from common.logging_setup import setup_logging
from station.fleet import make_fleet
from station.host import Host, HostConfig, run_host
from station.links import DealerLink, Link, MultiLink
from station.replica import replica_prefix
from station.sim import Charger

POINT_ID_RE: Final = re.compile(r"^[^\s\x00-\x1f]{1,64}$")
TERM_WAIT_S: Final = 0.5
_KEEP: list[zmq.Context[zmq.Socket[bytes]]] = []
PREFIX_RE: Final = re.compile(r"^[^\s\x00-\x1f]{0,56}$")

PROG: Final = "ev-station"
EXIT_CODES: Final = (
    (EXIT_OK, "stopped by SIGINT/SIGTERM"),
    (EXIT_FAILED, "failure"),
    (EXIT_USAGE, "usage or configuration error"),
)

app = new_app("Simulated evcharge charging stations.")


@app.callback()
def main_options(version: Annotated[bool, version_option(PROG)] = False) -> None:
    """Simulated evcharge charging stations."""


def _env(name: str) -> str:
    return f"EV_{name}"


def _fleet_env(name: str) -> str:
    """Fleet-only options: ``EV_FLEET_<NAME>`` (``EV_COUNT`` would also be the swarm's)."""
    return f"EV_FLEET_{name}"


Broker = Annotated[str, typer.Option(envvar=_env("BROKER"), help="Broker host name or address.")]
StatusPort = Annotated[
    int, typer.Option(envvar=_env("STATUS_PORT"), min=1, max=65535, help="Broker UDP status port.")
]
StationPort = Annotated[
    int,
    typer.Option(envvar=_env("STATION_PORT"), min=1, max=65535, help="Broker ZeroMQ ROUTER port."),
]
Interval = Annotated[
    float,
    typer.Option(
        envvar=_env("INTERVAL"), min=0.05, max=3600.0, help="Seconds between status datagrams."
    ),
]
Dwell = Annotated[
    float,
    typer.Option(
        envvar=_env("DWELL"),
        min=0.0,
        max=86400.0,
        help="Seconds the vehicle stays plugged in after charging ends (parking time).",
    ),
]
Speed = Annotated[
    float,
    typer.Option(
        envvar=_env("SPEED"), min=0.001, max=1e6, help="Simulated seconds per real second."
    ),
]
PowerKw = Annotated[
    float, typer.Option(envvar=_env("POWER_KW"), min=0.1, max=10000.0, help="Rated power, kW.")
]
PriceKwh = Annotated[
    float, typer.Option(envvar=_env("PRICE_KWH"), min=0.0, max=1000.0, help="Price per kWh, BRL.")
]
Heartbeat = Annotated[
    float,
    typer.Option(
        envvar=_env("HEARTBEAT"), min=0.1, max=60.0, help="Heartbeat period when idle, seconds."
    ),
]
BrokerSilence = Annotated[
    float,
    typer.Option(
        envvar=_env("BROKER_SILENCE"),
        min=0.1,
        max=3600.0,
        help="Seconds without a word from the broker before the station re-creates its "
        "ZeroMQ socket and says hello again.",
    ),
]
LogLevelOpt = Annotated[LogLevel, typer.Option(envvar=_env("LOG_LEVEL"), help="Log level.")]
FaultAfter = Annotated[
    float | None,
    typer.Option(
        envvar=_env("FAULT_AFTER"),
        min=0.0,
        help="Fault injection: go indisponivel this many seconds after start "
        "(a running session ends with reason fault).",
    ),
]
FaultFor = Annotated[
    float | None,
    typer.Option(
        envvar=_env("FAULT_FOR"),
        min=0.0,
        help="With --fault-after: clear the fault after this many seconds (default: never).",
    ),
]
Credentials = Annotated[
    str | None,
    typer.Option(
        "--credentials",
        envvar=_env("CREDENTIALS"),
        help="A station .cred file covering the point id(s) (needed unless the broker "
        "runs --insecure).",
    ),
]
MuteCommands = Annotated[
    bool,
    typer.Option(
        envvar=_env("MUTE_COMMANDS"),
        help="Fault injection: never answer hold/release/start/stop (the broker then "
        "sees the point as unreachable); datagrams and heartbeats continue.",
    ),
]


def _setup_logging(level: LogLevel) -> None:
    setup_logging("text", getattr(logging, level.value.upper()))


def _terminate(ctx: zmq.Context[zmq.Socket[bytes]]) -> bool:
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


def _serve(chargers: list[Charger], config: HostConfig, single: bool) -> None:
    # A fleet's thousands of connections keep one libzmq I/O thread busy: give it two.
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1 if single else 2)
    endpoint = f"tcp://{config.broker}:{config.station_port}"

    def link_factory(ids: list[str]) -> Link:
        if single:
            return DealerLink(ctx, endpoint, ids[0], config.credential)
        return MultiLink(ctx, endpoint, ids, config.credential)

    host = Host(chargers, config, link_factory, out=lambda line: print(line, flush=True))
    try:
        run_host(host)
    finally:
        terminated = _terminate(ctx)
    c = host.counters
    print(
        f"stopped: {c.datagrams} datagrams, {c.frames_out} frames out, {c.frames_in} frames in",
        flush=True,
    )
    if not terminated:
        # libzmq is still tearing down connections of sockets we already closed; the
        # process exit would wait for it. Nothing is left to flush: leave at once.
        sys.stderr.flush()
        os._exit(0)


@app.command()
def run(
    id: Annotated[str, typer.Option("--id", envvar=_env("ID"), help="Point id (1-64 chars).")],
    lat: Annotated[float, typer.Option(envvar=_env("LAT"), min=-90.0, max=90.0, help="Latitude.")],
    lon: Annotated[
        float, typer.Option(envvar=_env("LON"), min=-180.0, max=180.0, help="Longitude.")
    ],
    power_kw: PowerKw = 50.0,
    price_kwh: PriceKwh = 2.0,
    broker: Broker = "127.0.0.1",
    status_port: StatusPort = 8082,
    station_port: StationPort = 5555,
    interval: Interval = 2.0,
    speed: Speed = 60.0,
    dwell: Dwell = 0.0,
    heartbeat: Heartbeat = 1.0,
    broker_silence: BrokerSilence = 5.0,
    fault_after: FaultAfter = None,
    fault_for: FaultFor = None,
    mute_commands: MuteCommands = False,
    credentials: Credentials = None,
    log_level: LogLevelOpt = LogLevel.info,
) -> None:
    """Run one simulated charging station."""
    if not POINT_ID_RE.match(id):
        raise typer.BadParameter("must be 1-64 characters, no spaces", param_hint="--id")
    _setup_logging(log_level)
    credential = station_credential(credentials, [id])
    charger = Charger(
        id, lat, lon, power_kw=power_kw, price_kwh=price_kwh, speed=speed, dwell_s=dwell
    )
    config = HostConfig(
        broker=broker,
        status_port=status_port,
        station_port=station_port,
        interval_s=interval,
        heartbeat_s=heartbeat,
        silence_s=broker_silence,
        fault_after_s=fault_after,
        fault_for_s=fault_for,
        mute_commands=mute_commands,
        credential=credential,
    )
    _serve([charger], config, single=True)


def _parse_center(text: str) -> tuple[float, float]:
    try:
        return parse_center(text)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message, param_hint="--center") from None


@app.command()
def fleet(
    count: Annotated[
        int,
        typer.Option(envvar=_fleet_env("COUNT"), min=1, max=100_000, help="Number of stations."),
    ],
    center: Annotated[
        str, typer.Option(envvar=_fleet_env("CENTER"), help="LAT,LON of the fleet's center.")
    ] = "-12.2664,-38.9663",
    radius_km: Annotated[
        float,
        typer.Option(envvar=_fleet_env("RADIUS_KM"), min=0.0, max=2000.0, help="Placement radius."),
    ] = 10.0,
    prefix: Annotated[str, typer.Option(envvar=_fleet_env("PREFIX"), help="Id prefix.")] = "CP",
    seed: Annotated[int, typer.Option(envvar=_fleet_env("SEED"), help="Placement seed.")] = 1,
    replica: Annotated[
        str,
        typer.Option(
            envvar=_fleet_env("REPLICA"),
            help="none | auto | N: put a replica number in the ids (PREFIX<N>-0001..); "
            "auto takes it from the compose container name, so scaled fleets differ.",
        ),
    ] = "none",
    power_kw: PowerKw = 50.0,
    price_kwh: PriceKwh = 2.0,
    broker: Broker = "127.0.0.1",
    status_port: StatusPort = 8082,
    station_port: StationPort = 5555,
    interval: Interval = 2.0,
    speed: Speed = 60.0,
    dwell: Dwell = 0.0,
    heartbeat: Heartbeat = 1.0,
    broker_silence: BrokerSilence = 5.0,
    report_every: Annotated[
        float,
        typer.Option(
            envvar=_fleet_env("REPORT_EVERY"), min=0.1, max=3600.0, help="Seconds between figures."
        ),
    ] = 5.0,
    credentials: Credentials = None,
    log_level: LogLevelOpt = LogLevel.info,
) -> None:
    """Run N simulated stations in one process (ids PREFIX0001..), deterministic with --seed."""
    where = _parse_center(center)
    if not PREFIX_RE.match(prefix):
        raise typer.BadParameter("at most 56 characters, no spaces", param_hint="--prefix")
    try:
        prefix = replica_prefix(prefix, replica)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message, param_hint="--replica") from None
    _setup_logging(log_level)
    chargers = make_fleet(count, where, radius_km, prefix, seed, power_kw, price_kwh, speed)
    for c in chargers:
        c.dwell_s = dwell
    credential = station_credential(credentials, [c.point_id for c in chargers])
    config = HostConfig(
        broker=broker,
        status_port=status_port,
        station_port=station_port,
        interval_s=interval,
        heartbeat_s=heartbeat,
        silence_s=broker_silence,
        report_s=report_every,
        credential=credential,
    )
    _serve(chargers, config, single=count == 1)


def main() -> None:
    run_cli(app, PROG, EXIT_CODES)


# the OCPP gateway's commands share this app and its options
from station.ocpp import cli as _ocpp_cli  # noqa: E402, F401
