"""``ev-vehicle``: the vehicle command line (Typer).

This module only parses options and calls library code (:mod:`vehicle.client`,
:mod:`vehicle.drive`, :mod:`vehicle.swarm`, :mod:`vehicle.menu`). Exit codes:
0 success, 1 refused request (or an ``erro`` reply), 2 usage error,
3 broker unreachable. With ``--json`` only JSON is printed on stdout (errors
as ``{"error": {"code", "message"}}``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, Any, Final, TypeVar

import typer
from rich.console import Console

from common import runner
from common.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    BrokerOpt,
    new_app,
    run,
    version_option,
)
from common.errors import (
    ConfigError,
    EVError,
    InternalError,
    ProtocolError,
    RequestRefused,
    TransportError,
)
from common.geo import DEMO_CENTER
from common.ports import VEHICLE_PORT
from common.runner import Interrupted
from vehicle import render
from vehicle.client import VehicleClient
from vehicle.config import payment_wire_name, resolve_vehicle_id, stored_token, token_file
from vehicle.settings import Settings

EXIT_REFUSED: Final = EXIT_FAILED  # the broker refused the request
PROG: Final = "ev-vehicle"
EXIT_CODES: Final = (
    (EXIT_OK, "success"),
    (EXIT_REFUSED, "a refused request (e.g. queue_full) or an error reply"),
    (EXIT_USAGE, "usage error"),
    (EXIT_UNREACHABLE, "broker unreachable"),
)
DEFAULT_LAT, DEFAULT_LON = DEMO_CENTER


class Payment(StrEnum):
    """Payment methods, as the wire spells them."""

    Pix = "Pix"
    debito = "debito"
    credito = "credito"


class Mix(StrEnum):
    """Request mixes of the load generator."""

    realistic = "realistic"
    ping = "ping"
    bateria = "bateria"
    consulta = "consulta"


def _env(name: str) -> str:
    """``EV_VEHICLE_<NAME>``: the plain names are the stations' (``EV_ID``, ``EV_LAT``...)."""
    return f"EV_VEHICLE_{name}"


T = TypeVar("T")

app = new_app(
    "Vehicle client of the evcharge network. Without a command: an interactive menu.",
    no_args_is_help=False,
)


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run ``factory()`` on uvloop (when available); SIGINT/SIGTERM raise Interrupted
    (a long-running command stopped: a clean exit 0)."""
    return runner.run(lambda _stop: factory(), cancel=True)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def exit_code_for(exc: EVError) -> int:
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, TransportError):
        return EXIT_UNREACHABLE
    if isinstance(exc, RequestRefused | ProtocolError):
        return EXIT_REFUSED
    return EXIT_REFUSED


def fail(settings: Settings, exc: EVError) -> typer.Exit:
    """Report ``exc`` in one line (or as JSON) and return the Exit to raise."""
    if settings.json:
        error: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.field is not None:
            error["field"] = exc.field
        emit_json({"error": error})
    else:
        where = f" (field {exc.field})" if exc.field else ""
        Console(stderr=True, highlight=False).print(
            f"error: {exc.code}: {exc.message}{where}", markup=False, soft_wrap=True
        )
    return typer.Exit(exit_code_for(exc))


def execute(
    ctx: typer.Context,
    work: Callable[[Settings], Awaitable[T]],
    show: Callable[[Console, T], None],
) -> None:
    """Run one command: JSON or rich output, exceptions mapped to exit codes."""
    settings: Settings = ctx.obj
    try:
        result = run_async(lambda: work(settings))
        if settings.json:
            emit_json(result)
        else:
            show(Console(highlight=False), result)
    except Interrupted:
        raise typer.Exit(EXIT_OK) from None
    except EVError as exc:
        raise fail(settings, exc) from None
    except BrokenPipeError:  # output piped into a reader that went away (| head)
        raise typer.Exit(EXIT_OK) from None
    except Exception as exc:  # a reply we could not make sense of: one line, no traceback
        unexpected = InternalError(f"unexpected {type(exc).__name__}: {exc}")
        raise fail(settings, unexpected) from None


def ask(
    ctx: typer.Context,
    request: Callable[[VehicleClient], Awaitable[dict[str, Any]]],
    line: Callable[[dict[str, Any]], str] = render.response_line,
) -> None:
    """One request on a connection of its own; the reply is printed as ``line(reply)``."""

    async def work(s: Settings) -> dict[str, Any]:
        async with s.client(reconnect=False) as c:
            return await request(c)

    execute(ctx, work, lambda con, data: con.print(line(data), markup=False, soft_wrap=True))


# --- global options ----------------------------------------------------------------------


@app.callback(invoke_without_command=True)
def main_options(
    ctx: typer.Context,
    broker: BrokerOpt = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port",
            envvar="EV_VEHICLE_PORT",
            min=1,
            max=65535,
            help="The broker's vehicle TCP port (ev-broker serve --vehicle-port).",
        ),
    ] = VEHICLE_PORT,
    vehicle_id: Annotated[
        str | None,
        typer.Option("--id", envvar=_env("ID"), help="Vehicle id (default: a stored stable id)."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", envvar=_env("JSON"), help="Print machine-readable JSON only.")
    ] = False,
    version: Annotated[bool, version_option(PROG)] = False,
    regions_file: Annotated[
        str | None,
        typer.Option(
            "--regions",
            envvar="EV_VEHICLE_REGIONS",
            help="Directory of regions (TOML): use the broker of the nearest region.",
        ),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option("--region", envvar="EV_VEHICLE_REGION", help="With --regions: this region."),
    ] = None,
) -> None:
    settings = Settings(broker, port, vehicle_id, json_out, None, regions_file, region)
    if region is not None and regions_file is None:
        raise typer.BadParameter("needs --regions FILE", param_hint="--region")
    if regions_file is not None:
        from vehicle.regions import choose, load_directory

        try:
            choose(load_directory(regions_file), region, (0.0, 0.0))
        except ConfigError as exc:
            raise typer.BadParameter(exc.message, param_hint="--regions") from None
    ctx.obj = settings
    if vehicle_id is not None:
        try:
            resolve_vehicle_id(vehicle_id)
        except ConfigError as exc:
            raise typer.BadParameter(exc.message, param_hint="--id") from None
    if ctx.invoked_subcommand is None:
        from vehicle.menu import run_menu

        try:
            run_async(lambda: run_menu(settings))
        except Interrupted:
            pass
        except EVError as exc:
            raise fail(settings, exc) from None


# --- commands ------------------------------------------------------------------------------

Lat = Annotated[
    float,
    typer.Option("--lat", envvar=_env("LAT"), min=-90.0, max=90.0, help="Vehicle latitude."),
]
Lon = Annotated[
    float,
    typer.Option("--lon", envvar=_env("LON"), min=-180.0, max=180.0, help="Vehicle longitude."),
]
MaxKm = Annotated[
    float | None,
    typer.Option(
        "--max-km", envvar=_env("MAX_KM"), min=0.0, help="Only points within this radius (km)."
    ),
]
PaymentOpt = Annotated[
    Payment,
    typer.Option(
        "--payment",
        envvar=_env("PAYMENT"),
        case_sensitive=False,
        metavar="Pix|debito|credito",
        help="Payment method (any case).",
    ),
]


class SortBy(StrEnum):
    distance = "distance"
    cost = "cost"


CapacityKwh = Annotated[
    float,
    typer.Option(
        "--capacity-kwh", envvar=_env("CAPACITY_KWH"), min=0.001, max=1000.0, help="Battery size."
    ),
]
Point = Annotated[str, typer.Argument(help="Charging point id, e.g. CP01.")]


def _print_points(console: Console, points: list[dict[str, Any]]) -> None:
    console.print(render.points_table(points))


@app.command()
def nearby(
    ctx: typer.Context,
    lat: Lat = DEFAULT_LAT,
    lon: Lon = DEFAULT_LON,
    battery: Annotated[
        float,
        typer.Option(
            "--battery", envvar=_env("BATTERY"), min=0.0, max=100.0, help="Battery level %."
        ),
    ] = 30.0,
    max_km: MaxKm = None,
    limit: Annotated[
        int,
        typer.Option("--limit", envvar=_env("LIMIT"), min=1, max=100, help="At most this many."),
    ] = 10,
    target: Annotated[
        float | None,
        typer.Option(
            "--target",
            envvar=_env("TARGET"),
            min=0.0,
            max=100.0,
            help="Target %: with it each point shows the estimated cost (custo_estimado).",
        ),
    ] = None,
    capacity_kwh: CapacityKwh = 60.0,
    sort: Annotated[
        SortBy,
        typer.Option("--sort", envvar=_env("SORT"), help="distance, or cost (needs --target)."),
    ] = SortBy.distance,
) -> None:
    """Battery notification: the nearest points (pontos_disponiveis), with their tariffs."""
    ordenar = "custo" if sort is SortBy.cost else None

    async def work(s: Settings) -> list[dict[str, Any]]:
        async with s.client(near=(lat, lon), reconnect=False) as c:
            return await c.bateria(
                battery,
                lat,
                lon,
                distancia_max=max_km,
                limite=limit,
                capacidade_kwh=capacity_kwh if target is not None else None,
                nivel_carregar=target,
                ordenar=ordenar,
            )

    execute(ctx, work, _print_points)


@app.command("list")
def list_points(
    ctx: typer.Context, lat: Lat = DEFAULT_LAT, lon: Lon = DEFAULT_LON, max_km: MaxKm = None
) -> None:
    """List the charging points, nearest first (lista_pontos)."""

    async def work(s: Settings) -> list[dict[str, Any]]:
        async with s.client(near=(lat, lon), reconnect=False) as c:
            return await c.consulta(lat, lon, distancia_max=max_km)

    execute(ctx, work, _print_points)


@app.command()
def reserve(
    ctx: typer.Context,
    point: Point,
    eta: Annotated[
        float,
        typer.Option(
            "--eta", envvar=_env("ETA"), min=0.0, max=240.0, help="Minutes until arrival."
        ),
    ] = 0.0,
) -> None:
    """Reserve a place in a point's queue."""
    ask(ctx, lambda c: c.reserva(point, eta), render.reservation_line)


@app.command()
def cancel(ctx: typer.Context, point: Point) -> None:
    """Cancel this vehicle's reservation at a point."""
    ask(ctx, lambda c: c.cancelar(point))


@app.command()
def arrive(
    ctx: typer.Context,
    point: Point,
    battery: Annotated[
        float,
        typer.Option("--battery", envvar=_env("BATTERY"), min=0.0, max=100.0, help="Battery %."),
    ],
    target: Annotated[
        float,
        typer.Option("--target", envvar=_env("TARGET"), min=0.0, max=100.0, help="Target %."),
    ],
    payment: PaymentOpt,
    capacity_kwh: CapacityKwh = 60.0,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", envvar=_env("WAIT"), help="Stay connected until custo_final and print it."
        ),
    ] = False,
) -> None:
    """Arrive at a point and start charging."""
    method = payment_wire_name(payment.value)
    if target <= battery:
        raise typer.BadParameter("must be above --battery", param_hint="--target")

    async def work(s: Settings) -> dict[str, Any]:
        async with s.client(reconnect=wait) as c:
            if not wait:
                return await c.chegada(point, battery, target, method, capacidade_kwh=capacity_kwh)
            from vehicle.drive import wait_for_bill

            with c.pushes() as stream:
                started = await c.chegada(
                    point, battery, target, method, capacidade_kwh=capacity_kwh
                )
                bill = await wait_for_bill(c, stream, started.get("session_id"))
            return {"chegada": started, "custo_final": bill}

    def show(con: Console, data: dict[str, Any]) -> None:
        if wait:
            con.print(render.response_line(data["chegada"]), markup=False, soft_wrap=True)
            con.print(render.bill_table(data["custo_final"]))
        else:
            con.print(render.response_line(data), markup=False, soft_wrap=True)

    execute(ctx, work, show)


@app.command()
def stop(ctx: typer.Context, point: Point) -> None:
    """Stop charging early (the session is billed for the energy so far)."""
    ask(ctx, lambda c: c.parar(point))


@app.command()
def costs(ctx: typer.Context) -> None:
    """This vehicle's cost statement (every session, energy and cost)."""

    async def work(s: Settings) -> dict[str, Any]:
        async with s.client(reconnect=False) as c:
            return await c.custos()

    execute(ctx, work, lambda con, data: con.print(render.statement_table(data)))


@app.command()
def status(ctx: typer.Context) -> None:
    """This vehicle's reservation and charging session."""

    async def work(s: Settings) -> dict[str, Any]:
        async with s.client(reconnect=False) as c:
            return await c.status()

    def show(con: Console, data: dict[str, Any]) -> None:
        for line in render.status_lines(data):
            con.print(line, markup=False, soft_wrap=True)

    execute(ctx, work, show)


@app.command()
def register(ctx: typer.Context) -> None:
    """Register the vehicle id with the broker and keep its token (shown once)."""

    async def work(s: Settings) -> dict[str, Any]:
        vid = s.vehicle_id
        known = stored_token(s.broker, s.port, vid) is not None
        async with s.client(reconnect=False) as c:
            await c.ping()
        return {
            "vehicle_id": vid,
            "broker": f"{s.broker}:{s.port}",
            "code": "authenticated" if known else "registered",
            "token_file": str(token_file(s.broker, s.port)),
        }

    def show(con: Console, data: dict[str, Any]) -> None:
        if data["code"] == "registered":
            con.print(
                f"registered {data['vehicle_id']} at {data['broker']}; "
                f"token kept in {data['token_file']}",
                markup=False,
                soft_wrap=True,
            )
        else:
            con.print(
                f"{data['vehicle_id']} was already registered here with the kept token "
                f"({data['token_file']}); authenticated",
                markup=False,
                soft_wrap=True,
            )

    execute(ctx, work, show)


@app.command()
def whoami(ctx: typer.Context) -> None:
    """Which vehicle id this client speaks for, and whether the broker accepts its token."""

    async def work(s: Settings) -> dict[str, Any]:
        vid = s.vehicle_id
        token = stored_token(s.broker, s.port, vid)
        result: dict[str, Any] = {
            "vehicle_id": vid,
            "broker": f"{s.broker}:{s.port}",
            "token_file": str(token_file(s.broker, s.port)),
            "token_stored": token is not None,
            "authenticated": False,
        }
        if token is not None:
            client = VehicleClient(s.broker, s.port, vid, token=token, reconnect=False)
            async with client as c:
                await c.ping()
            result["authenticated"] = True
        return result

    def show(con: Console, data: dict[str, Any]) -> None:
        state = (
            "authenticated with the kept token"
            if data["authenticated"]
            else "no token kept for this broker (registered on first use)"
        )
        con.print(
            f"{data['vehicle_id']} at {data['broker']}: {state}", markup=False, soft_wrap=True
        )

    execute(ctx, work, show)


@app.command()
def drive(
    ctx: typer.Context,
    lat: Lat = DEFAULT_LAT,
    lon: Lon = DEFAULT_LON,
    battery: Annotated[
        float,
        typer.Option("--battery", envvar=_env("BATTERY"), min=0.0, max=99.0, help="Battery %."),
    ] = 15.0,
    target: Annotated[
        float,
        typer.Option("--target", envvar=_env("TARGET"), min=1.0, max=100.0, help="Target %."),
    ] = 80.0,
    speed: Annotated[
        float,
        typer.Option(
            "--speed",
            envvar="EV_DRIVE_SPEED",
            min=0.001,
            help="Simulated seconds per real second.",
        ),
    ] = 60.0,
    payment: PaymentOpt = Payment.Pix,
    capacity_kwh: CapacityKwh = 60.0,
) -> None:
    """A scripted trip: best point (distance + wait), reserve, turn, arrive, charge, bill."""
    from vehicle.drive import DriveConfig, run_drive

    method = payment_wire_name(payment.value)
    if target <= battery:
        raise typer.BadParameter("must be above --battery", param_hint="--target")
    settings: Settings = ctx.obj
    console = Console(stderr=settings.json, highlight=False, quiet=settings.json)

    async def work(s: Settings) -> dict[str, Any]:
        cfg = DriveConfig(lat, lon, battery, target, speed, method, capacity_kwh)
        async with s.client(near=(lat, lon), reconnect=True) as c:
            return await run_drive(
                c, cfg, lambda line: console.print(line, markup=False, soft_wrap=True)
            )

    execute(ctx, work, lambda con, data: con.print(render.bill_table(data)))


SwarmCountOpt = Annotated[
    int,
    typer.Option("--count", envvar="EV_SWARM_COUNT", min=1, max=100000, help="Simulated vehicles."),
]

SwarmDurationOpt = Annotated[
    float,
    typer.Option("--duration", envvar="EV_SWARM_DURATION", min=0.1, help="Seconds to run."),
]

SwarmRateOpt = Annotated[
    float | None,
    typer.Option(
        "--rate", envvar="EV_SWARM_RATE", min=0.1, help="Fixed total requests per second."
    ),
]

SwarmCenterOpt = Annotated[
    str, typer.Option("--center", envvar="EV_SWARM_CENTER", help="LAT,LON of the swarm.")
]

SwarmRadiusKmOpt = Annotated[
    float,
    typer.Option(
        "--radius-km", envvar="EV_SWARM_RADIUS_KM", min=0.0, help="Spread of the vehicles."
    ),
]

SwarmPipelineOpt = Annotated[
    int,
    typer.Option(
        "--pipeline",
        envvar="EV_SWARM_PIPELINE",
        min=1,
        max=1000,
        help="Requests in flight per vehicle.",
    ),
]

SwarmMixOpt = Annotated[Mix, typer.Option("--mix", envvar="EV_SWARM_MIX", help="Request mix.")]

SwarmSeedOpt = Annotated[
    int | None, typer.Option("--seed", envvar="EV_SWARM_SEED", help="Random seed.")
]

SwarmRegisterIdsOpt = Annotated[
    bool,
    typer.Option(
        "--register",
        envvar="EV_SWARM_REGISTER",
        help="Each vehicle registers its id first (figures include auth).",
    ),
]


@app.command()
def swarm(
    ctx: typer.Context,
    count: SwarmCountOpt,
    duration: SwarmDurationOpt,
    rate: SwarmRateOpt = None,
    center: SwarmCenterOpt = f"{DEFAULT_LAT},{DEFAULT_LON}",
    radius_km: SwarmRadiusKmOpt = 10.0,
    pipeline: SwarmPipelineOpt = 1,
    mix: SwarmMixOpt = Mix.realistic,
    seed: SwarmSeedOpt = None,
    register_ids: SwarmRegisterIdsOpt = False,
) -> None:
    """N concurrent simulated vehicles: throughput, latency percentiles, errors by code."""
    from common.geo import parse_center
    from vehicle.swarm import MIXES, SwarmConfig, run_swarm

    try:
        lat, lon = parse_center(center)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message, param_hint="--center") from None
    if mix.value not in MIXES:  # pragma: no cover - Mix lists exactly the MIXES
        raise typer.BadParameter(f"choose one of {', '.join(MIXES)}", param_hint="--mix")
    settings: Settings = ctx.obj
    console = Console(stderr=True, highlight=False)

    async def work(s: Settings) -> dict[str, Any]:
        host, port = s.address(near=(lat, lon))
        cfg = SwarmConfig(
            host=host,
            port=port,
            count=count,
            duration=duration,
            rate=rate,
            center=(lat, lon),
            radius_km=radius_km,
            pipeline=pipeline,
            mix=mix.value,
            seed=seed,
            register=register_ids,
        )
        progress = None if settings.json else console
        stop = asyncio.Event()  # SIGINT/SIGTERM: stop early and still print the figures
        with runner.on_stop_signals(stop.set):
            result = await run_swarm(cfg, progress, stop=stop)
        return result.to_dict()

    def show(con: Console, data: dict[str, Any]) -> None:
        from vehicle.swarm import summary_table

        con.print(summary_table(data))

    execute(ctx, work, show)


GLOBAL_VALUE_OPTIONS: Final = frozenset({"--broker", "--port", "--id", "--regions", "--region"})
GLOBAL_FLAGS: Final = frozenset({"--json"})


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options written after the command in front of it.

    ``ev-vehicle list --lat 1 --lon 2 --json`` then means
    ``ev-vehicle --json list --lat 1 --lon 2`` (no command has options of these names).
    """
    commands = {
        c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
    }
    i = 0
    while i < len(argv):  # skip the global options written before the command
        token = argv[i]
        if token in GLOBAL_VALUE_OPTIONS:
            i += 2
        elif token.startswith("-"):
            i += 1
        else:
            break
    if i >= len(argv) or argv[i] not in commands:
        return argv
    head, command, rest = argv[:i], argv[i], argv[i + 1 :]
    hoisted: list[str] = []
    kept: list[str] = []
    j = 0
    while j < len(rest):
        token = rest[j]
        name = token.split("=", 1)[0]
        if token == "--":
            kept.extend(rest[j:])
            break
        if token in GLOBAL_FLAGS or (name in GLOBAL_VALUE_OPTIONS and "=" in token):
            hoisted.append(token)
        elif token in GLOBAL_VALUE_OPTIONS and j + 1 < len(rest):
            hoisted.extend(rest[j : j + 2])
            j += 1
        else:
            kept.append(token)
        j += 1
    return [*head, *hoisted, command, *kept]


def main() -> None:
    """Console-script entry point."""
    run(app, PROG, EXIT_CODES, hoist_global_options(sys.argv[1:]))
