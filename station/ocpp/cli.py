"""`ev-station ocpp` (the gateway), `ev-station ocpp-password` and `ev-station
ocpp-charger` (simulated OCPP chargers), added to the `ev-station` Typer app."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import zmq

from common import runner
from common.cli import LogLevel
from common.errors import ConfigError
from common.oslimits import raise_nofile_limit
from common.ports import OCPP_PORT, STATION_PORT, STATUS_PORT, VEHICLE_PORT
from station.cli_options import (
    Broker,
    Credentials,
    Heartbeat,
    Interval,
    LogLevelOpt,
    StationPort,
    StatusPort,
    env,
    setup_text_logging,
    station_credential,
    terminate_context,
)
from station.host import HostConfig
from station.links import Link, SharedLink
from station.ocpp.chargers_file import ChargerSpec, load_chargers
from station.ocpp.gateway import Gateway, GatewayConfig
from station.ocpp.guard import IdTags
from station.ocpp.passwords import DEFAULT_ITERATIONS, hash_password
from station.ocpp.simulator import SimCharger, SimOptions
from station.ocpp.simulator201 import SimCharger201
from station.ocpp.state import GatewayState

FD_RESERVE = 64  # descriptors besides the chargers' (loop, ZeroMQ mailboxes, UDP, files)


ChargersOpt = Annotated[
    Path, typer.Option(envvar=env("CHARGERS"), help="TOML file listing the chargers.")
]

OcppHostOpt = Annotated[
    str, typer.Option(envvar=env("OCPP_HOST"), help="WebSocket listen address.")
]

OcppPortOpt = Annotated[
    int,
    typer.Option(envvar=env("OCPP_PORT"), min=0, max=65535, help="WebSocket port."),
]

StateFileOpt = Annotated[
    Path | None,
    typer.Option(
        envvar=env("OCPP_STATE"),
        help="State file (open transactions, boot id); default: next to --chargers.",
    ),
]

CertOpt = Annotated[
    Path | None,
    typer.Option(envvar=env("OCPP_CERT"), help="TLS certificate (Security Profile 2)."),
]

KeyOpt = Annotated[Path | None, typer.Option(envvar=env("OCPP_KEY"), help="TLS private key.")]

ClientCaOpt = Annotated[
    Path | None,
    typer.Option(
        envvar=env("OCPP_CLIENT_CA"),
        help="CA of charger certificates (Security Profile 3: mutual TLS).",
    ),
]

MeterIntervalOpt = Annotated[
    int,
    typer.Option(
        envvar=env("METER_INTERVAL"),
        min=1,
        max=3600,
        help="Meter sampling interval set on every charger at boot, seconds.",
    ),
]

OcppHeartbeatOpt = Annotated[
    int,
    typer.Option(
        envvar=env("OCPP_HEARTBEAT"),
        min=1,
        max=86400,
        help="Heartbeat interval told to chargers in BootNotification, seconds.",
    ),
]

VehiclePortOpt = Annotated[
    int,
    typer.Option(
        envvar=env("VEHICLE_PORT"),
        min=1,
        max=65535,
        help="Broker vehicle port (walk-in sessions arrive as vehicles).",
    ),
]

WalkinCapacityOpt = Annotated[
    float,
    typer.Option(
        envvar=env("WALKIN_CAPACITY"),
        min=1.0,
        max=1000.0,
        help="capacidade_kwh of a walk-in session (bounds its metered energy).",
    ),
]


def ocpp_gateway(
    chargers: ChargersOpt,
    host: OcppHostOpt = "0.0.0.0",
    port: OcppPortOpt = OCPP_PORT,
    state: StateFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    client_ca: ClientCaOpt = None,
    ocpp_heartbeat: OcppHeartbeatOpt = 60,
    meter_interval: MeterIntervalOpt = 10,
    vehicle_port: VehiclePortOpt = VEHICLE_PORT,
    walkin_capacity: WalkinCapacityOpt = 100.0,
    broker: Broker = "127.0.0.1",
    status_port: StatusPort = STATUS_PORT,
    station_port: StationPort = STATION_PORT,
    interval: Interval = 2.0,
    heartbeat: Heartbeat = 1.0,
    credentials: Credentials = None,
    log_level: LogLevelOpt = LogLevel.info,
) -> None:
    """OCPP 1.6J / 2.0.1 gateway: chargers connect over WebSocket and join as stations."""
    setup_text_logging(log_level)
    logging.getLogger("ocpp").setLevel(logging.WARNING)  # it logs every message at INFO
    specs, st, ssl_ctx = _load(chargers, state, cert, key, client_ca)
    try:
        id_tags = IdTags.load(chargers)  # the idTags that may start walk-ins
    except ConfigError as exc:
        raise typer.BadParameter(exc.message, param_hint="--chargers") from None
    config = GatewayConfig(
        host=host,
        port=port,
        heartbeat_interval_s=ocpp_heartbeat,
        meter_interval_s=meter_interval,
        ssl_context=ssl_ctx,
        vehicle_port=vehicle_port,
        walkin_capacity_kwh=walkin_capacity,
        id_tags=id_tags,
    )
    credential = station_credential(credentials, [s.id for s in specs])
    host_config = HostConfig(
        broker=broker,
        status_port=status_port,
        station_port=station_port,
        interval_s=interval,
        heartbeat_s=heartbeat,
        credential=credential,
    )
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1 if len(specs) == 1 else 2)
    endpoint = f"tcp://{broker}:{station_port}"

    def link_factory(ids: list[str]) -> Link:
        # every point of the gateway on ONE connection to the broker (docs/station.md)
        return SharedLink(ctx, endpoint, "ocpp-gateway", len(ids), credential)

    _check_fd_limit(len({s.charger for s in specs}))
    gateway = Gateway(specs, config, host_config, st, link_factory)
    try:
        _run_gateway(gateway, host, port)
    finally:
        terminate_context(ctx)
    print("stopped: ocpp gateway", flush=True)


def _load(
    chargers: Path,
    state: Path | None,
    cert: Path | None,
    key: Path | None,
    client_ca: Path | None = None,
) -> tuple[list[ChargerSpec], GatewayState, ssl.SSLContext | None]:
    """The chargers file, the state file and the TLS context; BadParameter when unusable."""
    if (cert is None) != (key is None):
        raise typer.BadParameter("give both --cert and --key (or neither)")
    if client_ca is not None and cert is None:
        raise typer.BadParameter("--client-ca needs --cert and --key (mutual TLS)")
    try:
        specs = load_chargers(chargers)
        if client_ca is None and any(s.security_profile == 3 for s in specs):
            raise ConfigError("security_profile 3 chargers need --client-ca (mutual TLS)")
        st = GatewayState(state or chargers.with_suffix(".state.json"))
        st.load()
        ssl_ctx = None
        if cert is not None and key is not None:
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ssl_ctx.load_cert_chain(cert, key)
            if client_ca is not None:  # profile 3 chargers present one; profile 2 ones none
                ssl_ctx.verify_mode = ssl.CERT_OPTIONAL
                ssl_ctx.load_verify_locations(client_ca)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message, param_hint="--chargers") from None
    except (OSError, ssl.SSLError) as exc:
        raise typer.BadParameter(f"cannot load the TLS files: {exc}") from None
    return specs, st, ssl_ctx


def _check_fd_limit(chargers: int) -> None:
    """Raise the open-files limit; warn when it still cannot hold every charger."""
    limit = raise_nofile_limit()  # soft to hard: each connected charger is one socket
    if limit < chargers + FD_RESERVE:
        logging.getLogger("station.ocpp").warning(
            "open-files limit %d holds about %d connected chargers (each needs one socket, "
            "its WebSocket: every point shares one broker connection); raise the limit for %d",
            limit,
            max(0, limit - FD_RESERVE),
            chargers,
        )


def _run_gateway(gateway: Gateway, host: str, port: int) -> None:
    """Run ``gateway`` until SIGINT/SIGTERM; exit 1 when it cannot listen."""

    async def main(_stop: asyncio.Event) -> None:
        try:
            await gateway.run(lambda line: print(line, flush=True))
        except OSError as exc:
            print(f"error: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
            raise SystemExit(1) from None

    runner.run(main, on_stop=gateway.request_stop)


def ocpp_password(
    iterations: Annotated[
        int,
        typer.Option(
            envvar=env("OCPP_ITERATIONS"), min=1, max=1_000_000, help="PBKDF2 iterations."
        ),
    ] = DEFAULT_ITERATIONS,
) -> None:
    """Read a charger password (16-40 characters) on stdin; print its password_hash."""
    password = sys.stdin.readline().rstrip("\r\n")
    try:
        print(hash_password(password, iterations))
    except ConfigError as exc:
        raise typer.BadParameter(exc.message) from None


def ocpp_charger(
    url: Annotated[
        str, typer.Option(envvar=env("OCPP_URL"), help="Gateway URL, e.g. ws://host:9000/ocpp")
    ],
    id: Annotated[
        list[str], typer.Option("--id", envvar=env("OCPP_IDS"), help="Charger id (repeat).")
    ],
    password: Annotated[
        str, typer.Option(envvar=env("OCPP_PASSWORD"), help="Password of every charger.")
    ],
    power_kw: Annotated[
        float, typer.Option(envvar=env("POWER_KW"), min=0.1, max=1000.0, help="Rated power.")
    ] = 22.0,
    speed: Annotated[
        float,
        typer.Option(envvar=env("SPEED"), min=0.001, max=1e6, help="Meter runs this much faster."),
    ] = 60.0,
    ocpp: Annotated[
        str,
        typer.Option(
            envvar=env("OCPP_VERSION"), help="OCPP version the chargers speak: 1.6 or 2.0.1."
        ),
    ] = "1.6",
    log_level: LogLevelOpt = LogLevel.info,
) -> None:
    """Simulated OCPP 1.6J or 2.0.1 chargers (one connection each) that answer the gateway."""
    if ocpp not in ("1.6", "2.0.1"):
        raise typer.BadParameter("--ocpp must be 1.6 or 2.0.1", param_hint="--ocpp")
    kind: Any = SimCharger201 if ocpp == "2.0.1" else SimCharger
    setup_text_logging(log_level)
    logging.getLogger("ocpp").setLevel(logging.WARNING)
    ids = [i for item in id for i in item.replace(",", " ").split() if i]

    async def main(stop: asyncio.Event) -> None:
        sims = [
            kind(url.rstrip("/"), cid, password, SimOptions(power_kw=power_kw, speed=speed))
            for cid in ids
        ]
        tasks = [asyncio.create_task(s.run()) for s in sims]
        print(f"ocpp chargers ready: {', '.join(ids)} -> {url}", flush=True)
        await stop.wait()
        for s in sims:
            await s.close()
        for t in tasks:
            t.cancel()

    runner.run(main, fast_loop=False)
    print("stopped: ocpp chargers", flush=True)


def register(app: typer.Typer) -> None:
    """Add ``ocpp``, ``ocpp-password`` and ``ocpp-charger`` to ``app``."""
    app.command("ocpp")(ocpp_gateway)
    app.command("ocpp-password")(ocpp_password)
    app.command("ocpp-charger")(ocpp_charger)
