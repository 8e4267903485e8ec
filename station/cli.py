"""`ev-station`: run one simulated charging station, or a fleet of them (Typer app).

Every option also reads ``EV_<OPTION_NAME>`` from the environment (``EV_ID``,
``EV_LAT``, ``EV_BROKER``...); options only the fleet has read
``EV_FLEET_<OPTION_NAME>`` (``EV_FLEET_COUNT``...). SIGINT and SIGTERM stop cleanly with exit 0.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Annotated, Final

import typer
import zmq

from common.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, LogLevel, new_app, version_option
from common.cli import run as run_cli
from common.credentials import load_optional
from common.errors import ConfigError, SiteRefused, TransportError
from common.geo import parse_center
from common.ports import STATION_PORT, STATUS_PORT
from station.cli_options import (
    Broker,
    BrokerSilence,
    Credentials,
    Dwell,
    FaultAfter,
    FaultFor,
    Heartbeat,
    Interval,
    LogLevelOpt,
    MuteCommands,
    PowerKw,
    PriceKwh,
    Speed,
    StationPort,
    StatusPort,
    env,
    fleet_env,
    setup_text_logging,
    station_credential,
    terminate_context,
)
from station.fleet import make_fleet
from station.host import Host, HostConfig, run_host
from station.links import DealerLink, Link, MultiLink
from station.ocpp.cli import register as register_ocpp
from station.replica import replica_prefix
from station.sim import Charger
from station.site_setup import set_site

POINT_ID_RE: Final = re.compile(r"^[^\s\x00-\x1f]{1,64}$")
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
        terminated = terminate_context(ctx)
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
    id: Annotated[str, typer.Option("--id", envvar=env("ID"), help="Point id (1-64 chars).")],
    lat: Annotated[float, typer.Option(envvar=env("LAT"), min=-90.0, max=90.0, help="Latitude.")],
    lon: Annotated[
        float, typer.Option(envvar=env("LON"), min=-180.0, max=180.0, help="Longitude.")
    ],
    power_kw: PowerKw = 50.0,
    price_kwh: PriceKwh = 2.0,
    broker: Broker = "127.0.0.1",
    status_port: StatusPort = STATUS_PORT,
    station_port: StationPort = STATION_PORT,
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
    setup_text_logging(log_level)
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


def center_option(text: str) -> tuple[float, float]:
    try:
        return parse_center(text)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message, param_hint="--center") from None


FleetCountOpt = Annotated[
    int,
    typer.Option(envvar=fleet_env("COUNT"), min=1, max=100_000, help="Number of stations."),
]

FleetCenterOpt = Annotated[
    str, typer.Option(envvar=fleet_env("CENTER"), help="LAT,LON of the fleet's center.")
]

FleetRadiusKmOpt = Annotated[
    float,
    typer.Option(envvar=fleet_env("RADIUS_KM"), min=0.0, max=2000.0, help="Placement radius."),
]

FleetPrefixOpt = Annotated[str, typer.Option(envvar=fleet_env("PREFIX"), help="Id prefix.")]

FleetSeedOpt = Annotated[int, typer.Option(envvar=fleet_env("SEED"), help="Placement seed.")]

FleetReplicaOpt = Annotated[
    str,
    typer.Option(
        envvar=fleet_env("REPLICA"),
        help="none | auto | N: put a replica number in the ids (PREFIX<N>-0001..); "
        "auto takes it from the compose container name, so scaled fleets differ.",
    ),
]

FleetReportEveryOpt = Annotated[
    float,
    typer.Option(
        envvar=fleet_env("REPORT_EVERY"), min=0.1, max=3600.0, help="Seconds between figures."
    ),
]

FleetSiteOpt = Annotated[
    str | None,
    typer.Option(
        envvar=fleet_env("SITE"),
        help="Put every station in this site (PREFIX*), asking the broker's history port.",
    ),
]

FleetSiteLimitKwOpt = Annotated[
    float,
    typer.Option(
        envvar=fleet_env("SITE_LIMIT_KW"), min=0.001, max=100_000.0, help="The site's limit."
    ),
]

FleetSiteHistoryPortOpt = Annotated[
    int,
    typer.Option(
        envvar=fleet_env("SITE_HISTORY_PORT"), min=1, max=65535, help="Broker history port."
    ),
]

FleetSiteCredentialsOpt = Annotated[
    str | None,
    typer.Option(
        envvar=fleet_env("SITE_CREDENTIALS"),
        help="An operator .cred file for --site (unless the broker runs --insecure).",
    ),
]


@app.command()
def fleet(
    count: FleetCountOpt,
    center: FleetCenterOpt = "-12.2664,-38.9663",
    radius_km: FleetRadiusKmOpt = 10.0,
    prefix: FleetPrefixOpt = "CP",
    seed: FleetSeedOpt = 1,
    replica: FleetReplicaOpt = "none",
    power_kw: PowerKw = 50.0,
    price_kwh: PriceKwh = 2.0,
    broker: Broker = "127.0.0.1",
    status_port: StatusPort = STATUS_PORT,
    station_port: StationPort = STATION_PORT,
    interval: Interval = 2.0,
    speed: Speed = 60.0,
    dwell: Dwell = 0.0,
    heartbeat: Heartbeat = 1.0,
    broker_silence: BrokerSilence = 5.0,
    report_every: FleetReportEveryOpt = 5.0,
    credentials: Credentials = None,
    site: FleetSiteOpt = None,
    site_limit_kw: FleetSiteLimitKwOpt = 50.0,
    site_history_port: FleetSiteHistoryPortOpt = 5557,
    site_credentials: FleetSiteCredentialsOpt = None,
    log_level: LogLevelOpt = LogLevel.info,
) -> None:
    """Run N simulated stations in one process (ids PREFIX0001..), deterministic with --seed."""
    where = center_option(center)
    if not PREFIX_RE.match(prefix):
        raise typer.BadParameter("at most 56 characters, no spaces", param_hint="--prefix")
    try:
        prefix = replica_prefix(prefix, replica)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message, param_hint="--replica") from None
    setup_text_logging(log_level)
    chargers = make_fleet(count, where, radius_km, prefix, seed, power_kw, price_kwh, speed)
    for c in chargers:
        c.dwell_s = dwell
    credential = station_credential(credentials, [c.point_id for c in chargers])
    if site is not None:
        try:
            set_site(
                broker,
                site_history_port,
                site,
                site_limit_kw,
                f"{prefix}*",
                load_optional(site_credentials),
            )
        except (SiteRefused, ConfigError) as exc:
            raise typer.BadParameter(exc.message, param_hint="--site") from None
        except TransportError as exc:
            typer.echo(f"ev-station fleet: {exc.message}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        print(f"site {site}: {site_limit_kw:g} kW over {prefix}*", flush=True)
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


# the OCPP gateway's commands share this app and its options
register_ocpp(app)


def main() -> None:
    run_cli(app, PROG, EXIT_CODES)
