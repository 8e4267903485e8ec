"""`ev-broker serve`: options (each also from ``EV_<OPTION>``), validation, run loop.

Options are read as text and validated here, so a bad value gets one clear
line on stderr and exit code 2 (the usage-error code), never a traceback.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import sys
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from broker.limits import Limits
from common.errors import ConfigError, EVError, StoreError
from common.logging_setup import FORMATS, LEVELS, setup_logging
from common.timeutil import site_zone

log = logging.getLogger("broker")
T = TypeVar("T")

USAGE_EXIT = 2
LIMITS = Limits()  # the defaults shown by --help


def _opt(env: str, help_text: str, metavar: str) -> typer.models.OptionInfo:
    return typer.Option(envvar=env, help=help_text, show_envvar=True, metavar=metavar)  # type: ignore[no-any-return]


def _parse(
    name: str, text: str, convert: Callable[[str], T], check: Callable[[T], bool], rule: str
) -> T:
    try:
        value = convert(text.strip())
    except (ValueError, TypeError):
        raise ConfigError(f"invalid value for --{name}: {text!r} ({rule})") from None
    if not check(value):
        raise ConfigError(f"invalid value for --{name}: {text!r} ({rule})")
    return value


def _zone(text: str) -> tzinfo:
    try:
        return site_zone(text.strip() or None)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message, param_hint="--timezone") from None


def _port(name: str, text: str) -> int:
    return _parse(name, text, int, lambda p: 0 <= p <= 65535, "a port number 0-65535")


def _seconds(name: str, text: str) -> float:
    return _parse(
        name, text, float, lambda v: math.isfinite(v) and v > 0, "a positive number of seconds"
    )


def _retention(text: str) -> float | None:
    days = _parse(
        "retain-events",
        text,
        float,
        lambda v: math.isfinite(v) and 0 <= v <= 100_000,
        "a number of days >= 0 (0 keeps every event)",
    )
    return None if days == 0 else days * 86400.0


def _count(name: str, text: str) -> int:
    return _parse(name, text, int, lambda v: v >= 1, "a positive integer")


def _host(text: str, name: str = "host") -> str:
    host = text.strip()
    if not host:
        raise ConfigError(f"invalid value for --{name}: empty")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost" and not all(
            part.isalnum() or "-" in part for part in host.split(".")
        ):
            raise ConfigError(
                f"invalid value for --{name}: {text!r} (an IP address or host name)"
            ) from None
    return host


def serve(
    host: Annotated[
        str, _opt("EV_HOST", "Address of the public edges (8081, 8082, 5555).", "HOST")
    ] = "0.0.0.0",
    internal_host: Annotated[
        str,
        _opt("EV_INTERNAL_HOST", "Address of the internal ports (5556, 5557, 8090).", "HOST"),
    ] = "127.0.0.1",
    vehicle_port: Annotated[
        str, _opt("EV_VEHICLE_PORT", "TCP port for vehicles.", "PORT")
    ] = "8081",
    status_port: Annotated[
        str, _opt("EV_STATUS_PORT", "UDP port for station status.", "PORT")
    ] = "8082",
    station_port: Annotated[
        str, _opt("EV_STATION_PORT", "ZeroMQ ROUTER for stations.", "PORT")
    ] = "5555",
    events_port: Annotated[
        str, _opt("EV_EVENTS_PORT", "ZeroMQ PUB for bus events.", "PORT")
    ] = "5556",
    history_port: Annotated[
        str, _opt("EV_HISTORY_PORT", "ZeroMQ ROUTER for history and snapshot.", "PORT")
    ] = "5557",
    http_port: Annotated[
        str, _opt("EV_HTTP_PORT", "HTTP port for /metrics and /healthz.", "PORT")
    ] = "8090",
    db: Annotated[
        str, _opt("EV_DB", 'SQLite file, or ":memory:" for none.', "PATH")
    ] = "./var/broker.db",
    queue_capacity: Annotated[str, _opt("EV_QUEUE_CAPACITY", "Reservations per point.", "N")] = "5",
    hold_minutes: Annotated[
        str,
        _opt(
            "EV_HOLD_MINUTES", "Minutes a turn is held for the vehicle (fractions ok).", "MINUTES"
        ),
    ] = "10",
    offline_after: Annotated[
        str, _opt("EV_OFFLINE_AFTER", "Seconds of silence before a point is offline.", "SECONDS")
    ] = "6",
    offline_grace: Annotated[
        str,
        _opt("EV_OFFLINE_GRACE", "Seconds an offline/faulted point keeps its queue.", "SECONDS"),
    ] = "120",
    timezone: Annotated[
        str,
        _opt(
            "EV_TIMEZONE",
            "The site's time zone for tariff time-of-day, date and weekday restrictions "
            "(IANA name, e.g. America/Sao_Paulo; default: the machine's local zone).",
            "ZONE",
        ),
    ] = "",
    max_parking: Annotated[
        str,
        _opt(
            "EV_MAX_PARKING",
            "Hours of parking (plugged in after charging) billed at most (fractions ok).",
            "HOURS",
        ),
    ] = "12",
    retain_events: Annotated[
        str,
        _opt(
            "EV_RETAIN_EVENTS",
            "Delete bus events older than this many days (fractions ok; 0 keeps all). "
            "History then answers `since` below the oldest kept seq with error pruned.",
            "DAYS",
        ),
    ] = "0",
    ack_timeout: Annotated[
        str,
        _opt("EV_ACK_TIMEOUT", "Seconds a station has to ack a start command.", "SECONDS"),
    ] = "5",
    heartbeat: Annotated[
        str,
        _opt(
            "EV_SERVE_HEARTBEAT", "Seconds between the broker's heartbeats to stations.", "SECONDS"
        ),
    ] = "1",
    low_battery: Annotated[
        str,
        _opt(
            "EV_LOW_BATTERY",
            "Battery level (percent) below which vehicle.low_battery is published.",
            "PERCENT",
        ),
    ] = "20",
    vehicle_auth: Annotated[
        str,
        _opt(
            "EV_VEHICLE_AUTH",
            "open: unregistered ids work (the original client); required: state changes "
            "and account reads need a registered, authenticated vehicle.",
            "open|required",
        ),
    ] = "open",
    max_vehicle_connections: Annotated[
        str, _opt("EV_MAX_VEHICLE_CONNECTIONS", "Open vehicle connections at most.", "N")
    ] = str(LIMITS.max_vehicle_connections),
    requests_per_turn: Annotated[
        str,
        _opt(
            "EV_REQUESTS_PER_TURN",
            "Requests handled per vehicle connection per loop turn (fairness).",
            "N",
        ),
    ] = str(LIMITS.requests_per_turn),
    max_unsent_bytes: Annotated[
        str,
        _opt(
            "EV_MAX_UNSENT_BYTES",
            "Unsent reply bytes per vehicle connection before reading from it stops.",
            "BYTES",
        ),
    ] = str(LIMITS.max_unsent_bytes),
    stalled_close: Annotated[
        str,
        _opt(
            "EV_STALLED_CLOSE",
            "Seconds a connection over the unsent-bytes limit may go without reading.",
            "SECONDS",
        ),
    ] = f"{LIMITS.stalled_close_s:g}",
    idle_timeout: Annotated[
        str,
        _opt("EV_IDLE_TIMEOUT", "Seconds without a request before a vehicle is closed.", "SECONDS"),
    ] = f"{LIMITS.idle_timeout_s:g}",
    max_http_connections: Annotated[
        str, _opt("EV_MAX_HTTP_CONNECTIONS", "Open HTTP connections at most.", "N")
    ] = str(LIMITS.max_http_connections),
    max_http_head: Annotated[
        str, _opt("EV_MAX_HTTP_HEAD", "Bytes of one HTTP request head (431 past it).", "BYTES")
    ] = str(LIMITS.max_http_head),
    max_points: Annotated[
        str, _opt("EV_MAX_POINTS", "Charging points at most; new ids past it are dropped.", "N")
    ] = str(LIMITS.max_points),
    history_max_events: Annotated[
        str, _opt("EV_HISTORY_MAX_EVENTS", "Events in one history reply at most.", "N")
    ] = str(LIMITS.history_max_events),
    history_max_bytes: Annotated[
        str, _opt("EV_HISTORY_MAX_BYTES", "Bytes of one history reply at most.", "BYTES")
    ] = str(LIMITS.history_max_bytes),
    keys: Annotated[
        str | None,
        _opt("EV_KEYS", "Folder of broker.key (default: the database's folder).", "DIR"),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            envvar="EV_INSECURE",
            show_envvar=True,
            help="Lab only: no station, status or consumer authentication (logs a warning).",
        ),
    ] = False,
    log_format: Annotated[
        str, _opt("EV_LOG_FORMAT", "Log format: text or json.", "text|json")
    ] = "text",
    log_level: Annotated[str, _opt("EV_LOG_LEVEL", "Log level.", "|".join(LEVELS))] = "info",
) -> None:
    """Run the broker service until SIGINT or SIGTERM."""
    from broker.app import AppConfig
    from broker.core import CoreConfig
    from broker.core.vehicle_auth import AuthMode

    try:
        fmt = log_format.strip().lower()
        if fmt not in FORMATS:
            raise ConfigError(f"invalid value for --log-format: {log_format!r} (text or json)")
        level = log_level.strip().lower()
        if level not in LEVELS:
            raise ConfigError(
                f"invalid value for --log-level: {log_level!r} (one of {', '.join(LEVELS)})"
            )
        if not db.strip():
            raise ConfigError("invalid value for --db: empty")
        points_cap = _count("max-points", max_points)  # enforced by the core
        config = AppConfig(
            host=_host(host),
            internal_host=_host(internal_host, "internal-host"),
            insecure=insecure,
            keys=keys.strip() if keys and keys.strip() else None,
            vehicle_port=_port("vehicle-port", vehicle_port),
            status_port=_port("status-port", status_port),
            station_port=_port("station-port", station_port),
            events_port=_port("events-port", events_port),
            history_port=_port("history-port", history_port),
            http_port=_port("http-port", http_port),
            db=db.strip(),
            core=CoreConfig(
                queue_capacity=_parse(
                    "queue-capacity",
                    queue_capacity,
                    int,
                    lambda v: 1 <= v <= 10_000,
                    "an integer 1-10000",
                ),
                hold_s=_seconds("hold-minutes", hold_minutes) * 60.0,
                offline_after_s=_seconds("offline-after", offline_after),
                offline_grace_s=_seconds("offline-grace", offline_grace),
                ack_timeout_s=_seconds("ack-timeout", ack_timeout),
                heartbeat_s=_seconds("heartbeat", heartbeat),
                low_battery=_parse(
                    "low-battery",
                    low_battery,
                    float,
                    lambda v: 0 <= v <= 100,
                    "a percentage 0-100",
                ),
                max_points=points_cap,
                tz=_zone(timezone),
                max_parking_s=_seconds("max-parking", max_parking) * 3600.0,
            ),
            retain_events_s=_retention(retain_events),
            vehicle_auth=_parse(
                "vehicle-auth", vehicle_auth, AuthMode, lambda _: True, "open or required"
            ),
            limits=Limits(
                max_vehicle_connections=_count("max-vehicle-connections", max_vehicle_connections),
                requests_per_turn=_count("requests-per-turn", requests_per_turn),
                max_unsent_bytes=_count("max-unsent-bytes", max_unsent_bytes),
                stalled_close_s=_seconds("stalled-close", stalled_close),
                idle_timeout_s=_seconds("idle-timeout", idle_timeout),
                max_http_connections=_count("max-http-connections", max_http_connections),
                max_http_head=_count("max-http-head", max_http_head),
                max_points=points_cap,
                history_max_events=_count("history-max-events", history_max_events),
                history_max_bytes=_count("history-max-bytes", history_max_bytes),
            ),
        )
        if not insecure and config.db == ":memory:" and config.keys is None:
            raise ConfigError("--db :memory: keeps no credentials: give --keys DIR (or --insecure)")
    except ConfigError as exc:
        typer.echo(f"ev-broker serve: {exc.message}", err=True)
        raise typer.Exit(USAGE_EXIT) from None
    setup_logging(fmt, level)
    raise typer.Exit(run(config))


def run(config: object) -> int:
    """Run the service on uvloop (when available); returns the exit code."""
    import zmq

    from broker.app import AppConfig
    from broker.app import serve as serve_app
    from common.runner import run as run_until_stopped

    assert isinstance(config, AppConfig)

    def ready(description: str) -> None:
        print(f"ev-broker ready: {description}", flush=True)

    try:
        return run_until_stopped(lambda stop: serve_app(config, ready, stop))
    except StoreError as exc:
        print(f"ev-broker serve: {exc.message}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:
        print(f"ev-broker serve: cannot bind a socket: {exc}", file=sys.stderr, flush=True)
        return 1
    except EVError as exc:
        print(f"ev-broker serve: {exc.message}", file=sys.stderr, flush=True)
        return 1
    except zmq.ZMQError as exc:
        print(f"ev-broker serve: cannot bind a ZeroMQ socket: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0


def backup(
    file: Annotated[Path, typer.Argument(help="Where to write the copy.", metavar="FILE")],
    db: Annotated[
        Path, _opt("EV_DB", "The running broker's SQLite file (ev-broker serve --db).", "PATH")
    ] = Path("./var/broker.db"),
    force: Annotated[
        bool,
        typer.Option("--force", envvar="EV_BACKUP_FORCE", help="Replace FILE if it exists."),
    ] = False,
) -> None:
    """Copy the broker's database while it runs (SQLite online backup): a consistent,
    checked file to restore with `ev-broker serve --db FILE`."""
    from broker.backup import backup as take_backup

    try:
        result = take_backup(db, file, overwrite=force)
    except ConfigError as exc:
        typer.echo(f"ev-broker backup: {exc.message}", err=True)
        raise typer.Exit(USAGE_EXIT) from None
    except EVError as exc:
        typer.echo(f"ev-broker backup: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"backup: {result.path} ({result.bytes} bytes, {result.events} events, "
        f"last seq {result.last_seq})"
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``backup`` to the ``ev-broker`` app."""
    app.command("serve")(serve)
    app.command("backup")(backup)
