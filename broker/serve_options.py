"""The options of ``ev-broker serve``, declared once: flag, variable, help, default, reader.

Each :class:`Option` is read as text (so that a bad value gets one clear line
and exit code 2, never a traceback) by its ``read`` function into a typed
value; :func:`app_config` turns the values into the service's
:class:`broker.app.AppConfig`. The command's signature (what ``--help``
shows) is built from :data:`OPTIONS` by :mod:`broker.serve_cli`.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import typer

from broker.core.config import CoreConfig
from broker.core.vehicle_auth import MAX_REGISTRATIONS, AuthMode
from broker.limits import Limits
from common.errors import ConfigError
from common.logging_setup import FORMATS, LEVELS
from common.ports import (
    EVENTS_PORT,
    GATEWAY_PORT,
    HISTORY_PORT,
    HTTP_PORT,
    STATION_PORT,
    STATUS_PORT,
    VEHICLE_PORT,
)
from common.timeutil import site_zone

if TYPE_CHECKING:
    from broker.app import AppConfig

T = TypeVar("T")

LIMITS: Final = Limits()  # the defaults shown by --help
CORE: Final = CoreConfig()
DEFAULT_DB: Final = "./var/broker.db"


def parse(
    name: str, text: str, convert: Callable[[str], T], check: Callable[[T], bool], rule: str
) -> T:
    """``convert(text)`` if ``check`` accepts it, else ConfigError naming --name and rule."""
    try:
        value = convert(text.strip())
    except (ValueError, TypeError):
        raise ConfigError(f"invalid value for --{name}: {text!r} ({rule})") from None
    if not check(value):
        raise ConfigError(f"invalid value for --{name}: {text!r} ({rule})")
    return value


def port(name: str, text: str) -> int:
    return parse(name, text, int, lambda p: 0 <= p <= 65535, "a port number 0-65535")


def seconds(name: str, text: str) -> float:
    return parse(
        name, text, float, lambda v: math.isfinite(v) and v > 0, "a positive number of seconds"
    )


def optional_port(name: str, text: str) -> int | None:
    """A port, or None for an empty text."""
    return port(name, text) if text.strip() else None


def gateways(name: str, text: str) -> int:
    """``auto`` (what suits this machine) or a number of local gateways 0-64."""
    from broker.gateway.supervisor import auto_gateways

    if text.strip().lower() == "auto":
        return auto_gateways()
    return parse(name, text, int, lambda v: 0 <= v <= 64, "auto or an integer 0-64")


def count(name: str, text: str) -> int:
    return parse(name, text, int, lambda v: v >= 1, "a positive integer")


def retention(name: str, text: str) -> float | None:
    """Days to keep bus events, as seconds; None (keep every event) for 0."""
    days = parse(
        name,
        text,
        float,
        lambda v: math.isfinite(v) and 0 <= v <= 100_000,
        "a number of days >= 0 (0 keeps every event)",
    )
    return None if days == 0 else days * 86400.0


def host(name: str, text: str) -> str:
    value = text.strip()
    if not value:
        raise ConfigError(f"invalid value for --{name}: empty")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value != "localhost" and not all(
            part.isalnum() or "-" in part for part in value.split(".")
        ):
            raise ConfigError(
                f"invalid value for --{name}: {text!r} (an IP address or host name)"
            ) from None
    return value


def db_path(name: str, text: str) -> str:
    if not text.strip():
        raise ConfigError(f"invalid value for --{name}: empty")
    return text.strip()


def log_format(name: str, text: str) -> str:
    fmt = text.strip().lower()
    if fmt not in FORMATS:
        raise ConfigError(f"invalid value for --{name}: {text!r} (text or json)")
    return fmt


def log_level(name: str, text: str) -> str:
    level = text.strip().lower()
    if level not in LEVELS:
        raise ConfigError(f"invalid value for --{name}: {text!r} (one of {', '.join(LEVELS)})")
    return level


def queue_capacity(name: str, text: str) -> int:
    return parse(name, text, int, lambda v: 1 <= v <= 10_000, "an integer 1-10000")


def minutes(name: str, text: str) -> float:
    return seconds(name, text) * 60.0


def percent(name: str, text: str) -> float:
    return parse(name, text, float, lambda v: 0 <= v <= 100, "a percentage 0-100")


def time_scale(name: str, text: str) -> float:
    return parse(name, text, float, lambda v: 1 <= v <= 10_000, "a number 1-10000")


def zone(name: str, text: str) -> tzinfo:
    """The site's time zone (IANA name); empty: the machine's local zone."""
    try:
        return site_zone(text.strip() or None)
    except ConfigError as exc:
        raise ConfigError(f"invalid value for --{name}: {exc.message}") from None


def hours(name: str, text: str) -> float:
    return seconds(name, text) * 3600.0


def auth_mode(name: str, text: str) -> AuthMode:
    return parse(name, text, AuthMode, lambda _: True, "open or required")


def option_info(env: str, help_text: str, metavar: str) -> typer.models.OptionInfo:
    """A text option read from ``env`` too (shown in --help), for a value read by hand."""
    # typer.Option is typed as returning Any (it is used as a parameter default)
    return typer.Option(envvar=env, help=help_text, show_envvar=True, metavar=metavar)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Option(Generic[T]):
    """One text option: ``--<name>`` (the key with ``-``), also read from ``env``."""

    env: str
    help: str
    metavar: str
    default: str
    read: Callable[[str, str], T]


OPTIONS: Final[dict[str, Option[Any]]] = {
    "host": Option(
        "EV_HOST",
        f"Address of the public edges ({VEHICLE_PORT}, {STATUS_PORT}, {STATION_PORT}).",
        "HOST",
        "0.0.0.0",
        host,
    ),
    "internal_host": Option(
        "EV_INTERNAL_HOST",
        f"Address of the internal ports ({EVENTS_PORT}, {HISTORY_PORT}, {HTTP_PORT}).",
        "HOST",
        "127.0.0.1",
        host,
    ),
    "vehicle_port": Option(
        "EV_VEHICLE_PORT", "TCP port for vehicles.", "PORT", str(VEHICLE_PORT), port
    ),
    "status_port": Option(
        "EV_STATUS_PORT", "UDP port for station status.", "PORT", str(STATUS_PORT), port
    ),
    "station_port": Option(
        "EV_STATION_PORT", "ZeroMQ ROUTER for stations.", "PORT", str(STATION_PORT), port
    ),
    "events_port": Option(
        "EV_EVENTS_PORT", "ZeroMQ PUB for bus events.", "PORT", str(EVENTS_PORT), port
    ),
    "history_port": Option(
        "EV_HISTORY_PORT",
        "ZeroMQ ROUTER for history and snapshot.",
        "PORT",
        str(HISTORY_PORT),
        port,
    ),
    "http_port": Option(
        "EV_HTTP_PORT", "HTTP port for /metrics and /healthz.", "PORT", str(HTTP_PORT), port
    ),
    "gateways": Option(
        "EV_GATEWAYS",
        "Local vehicle gateway processes holding the vehicle port; 0: this process "
        "holds it; auto: what suits this machine's cores (docs/performance.md).",
        "N|auto",
        "auto",
        gateways,
    ),
    "gateway_port": Option(
        "EV_GATEWAY_PORT",
        f"ZeroMQ ROUTER for vehicle gateways, on the internal address (default "
        f"{GATEWAY_PORT} with gateways; with --gateways 0 only when given).",
        "PORT",
        "",
        optional_port,
    ),
    "core_wait": Option(
        "EV_CORE_WAIT",
        "Seconds local gateways hold requests while the core is away.",
        "SECONDS",
        "10",
        seconds,
    ),
    "db": Option("EV_DB", 'SQLite file, or ":memory:" for none.', "PATH", DEFAULT_DB, db_path),
    "queue_capacity": Option(
        "EV_QUEUE_CAPACITY",
        "Reservations per point.",
        "N",
        str(CORE.queue_capacity),
        queue_capacity,
    ),
    "hold_minutes": Option(
        "EV_HOLD_MINUTES",
        "Minutes a turn is held for the vehicle (fractions ok).",
        "MINUTES",
        f"{CORE.hold_s / 60:g}",
        minutes,
    ),
    "offline_after": Option(
        "EV_OFFLINE_AFTER",
        "Seconds of silence before a point is offline.",
        "SECONDS",
        f"{CORE.offline_after_s:g}",
        seconds,
    ),
    "offline_grace": Option(
        "EV_OFFLINE_GRACE",
        "Seconds an offline/faulted point keeps its queue.",
        "SECONDS",
        f"{CORE.offline_grace_s:g}",
        seconds,
    ),
    "timezone": Option(
        "EV_TIMEZONE",
        "The site's time zone for tariff time-of-day, date and weekday restrictions "
        "(IANA name, e.g. America/Sao_Paulo; default: the machine's local zone).",
        "ZONE",
        "",
        zone,
    ),
    "max_parking": Option(
        "EV_MAX_PARKING",
        "Hours of parking (plugged in after charging) billed at most (fractions ok).",
        "HOURS",
        f"{CORE.max_parking_s / 3600:g}",
        hours,
    ),
    "max_reservations_per_address": Option(
        "EV_MAX_RESERVATIONS_PER_ADDRESS",
        "Live reservations the vehicles of one network address may hold; past it rate_limited.",
        "N",
        str(CORE.max_reservations_per_address),
        count,
    ),
    "metered_time_scale": Option(
        "EV_METERED_TIME_SCALE",
        "How much faster than real time metered (OCPP) chargers run: their energy is "
        "bounded by power x wall time x this + 10 %. 1 for real chargers; more only "
        "for simulators.",
        "FACTOR",
        f"{CORE.metered_time_scale:g}",
        time_scale,
    ),
    "retain_events": Option(
        "EV_RETAIN_EVENTS",
        "Delete bus events older than this many days (fractions ok; 0 keeps all). "
        "History then answers `since` below the oldest kept seq with error pruned.",
        "DAYS",
        "0",
        retention,
    ),
    "ack_timeout": Option(
        "EV_ACK_TIMEOUT",
        "Seconds a station has to ack a start command.",
        "SECONDS",
        f"{CORE.ack_timeout_s:g}",
        seconds,
    ),
    "heartbeat": Option(
        "EV_SERVE_HEARTBEAT",
        "Seconds between the broker's heartbeats to stations.",
        "SECONDS",
        f"{CORE.heartbeat_s:g}",
        seconds,
    ),
    "low_battery": Option(
        "EV_LOW_BATTERY",
        "Battery level (percent) below which vehicle.low_battery is published.",
        "PERCENT",
        f"{CORE.low_battery:g}",
        percent,
    ),
    "vehicle_auth": Option(
        "EV_VEHICLE_AUTH",
        "open: unregistered ids work (the original client); required: state changes "
        "and account reads need a registered, authenticated vehicle.",
        "open|required",
        AuthMode.OPEN.value,
        auth_mode,
    ),
    "max_registrations_per_address": Option(
        "EV_MAX_REGISTRATIONS_PER_ADDRESS",
        "registrar requests one network address may make a minute; past it rate_limited.",
        "N",
        str(MAX_REGISTRATIONS),
        count,
    ),
    "max_vehicle_connections": Option(
        "EV_MAX_VEHICLE_CONNECTIONS",
        "Open vehicle connections at most.",
        "N",
        str(LIMITS.max_vehicle_connections),
        count,
    ),
    "requests_per_turn": Option(
        "EV_REQUESTS_PER_TURN",
        "Requests handled per vehicle connection per loop turn (fairness).",
        "N",
        str(LIMITS.requests_per_turn),
        count,
    ),
    "max_unsent_bytes": Option(
        "EV_MAX_UNSENT_BYTES",
        "Unsent reply bytes per vehicle connection before reading from it stops.",
        "BYTES",
        str(LIMITS.max_unsent_bytes),
        count,
    ),
    "stalled_close": Option(
        "EV_STALLED_CLOSE",
        "Seconds a connection over the unsent-bytes limit may go without reading.",
        "SECONDS",
        f"{LIMITS.stalled_close_s:g}",
        seconds,
    ),
    "idle_timeout": Option(
        "EV_IDLE_TIMEOUT",
        "Seconds without a request before a vehicle is closed.",
        "SECONDS",
        f"{LIMITS.idle_timeout_s:g}",
        seconds,
    ),
    "max_http_connections": Option(
        "EV_MAX_HTTP_CONNECTIONS",
        "Open HTTP connections at most.",
        "N",
        str(LIMITS.max_http_connections),
        count,
    ),
    "max_http_head": Option(
        "EV_MAX_HTTP_HEAD",
        "Bytes of one HTTP request head (431 past it).",
        "BYTES",
        str(LIMITS.max_http_head),
        count,
    ),
    "max_points": Option(
        "EV_MAX_POINTS",
        "Charging points at most; new ids past it are dropped.",
        "N",
        str(CORE.max_points),
        count,
    ),
    "history_max_events": Option(
        "EV_HISTORY_MAX_EVENTS",
        "Events in one history reply at most.",
        "N",
        str(LIMITS.history_max_events),
        count,
    ),
    "history_max_bytes": Option(
        "EV_HISTORY_MAX_BYTES",
        "Bytes of one history reply at most.",
        "BYTES",
        str(LIMITS.history_max_bytes),
        count,
    ),
}
#: read first, in this order (then the rest, in declaration order)
READ_FIRST: Final = ("log_format", "log_level", "db", "max_points")
LOG_OPTIONS: Final[dict[str, Option[Any]]] = {
    "log_format": Option(
        "EV_LOG_FORMAT", "Log format: text or json.", "text|json", "text", log_format
    ),
    "log_level": Option("EV_LOG_LEVEL", "Log level.", "|".join(LEVELS), "info", log_level),
}


def read_all(texts: Mapping[str, str]) -> dict[str, Any]:
    """Every option's typed value from its text; ConfigError on the first bad one."""
    table = {**OPTIONS, **LOG_OPTIONS}
    order = [*READ_FIRST, *(k for k in table if k not in READ_FIRST)]
    return {k: table[k].read(k.replace("_", "-"), texts[k]) for k in order}


def app_config(v: Mapping[str, Any], *, insecure: bool, keys: str | None) -> AppConfig:
    """The service's :class:`broker.app.AppConfig` from the values of :func:`read_all`."""
    from broker.app import AppConfig  # the service's modules load only when it runs

    limits = {
        f: v[f]
        for f in (
            "max_vehicle_connections",
            "requests_per_turn",
            "max_unsent_bytes",
            "max_http_connections",
            "max_http_head",
            "history_max_events",
            "history_max_bytes",
        )
    }
    config = AppConfig(
        host=v["host"],
        internal_host=v["internal_host"],
        insecure=insecure,
        keys=keys.strip() if keys and keys.strip() else None,
        vehicle_port=v["vehicle_port"],
        status_port=v["status_port"],
        station_port=v["station_port"],
        events_port=v["events_port"],
        history_port=v["history_port"],
        http_port=v["http_port"],
        gateway_port=(
            v["gateway_port"]
            if v["gateway_port"] is not None or not v["gateways"]
            else GATEWAY_PORT
        ),
        gateways=v["gateways"],
        core_wait_s=v["core_wait"],
        db=v["db"],
        core=CoreConfig(
            queue_capacity=v["queue_capacity"],
            hold_s=v["hold_minutes"],
            offline_after_s=v["offline_after"],
            offline_grace_s=v["offline_grace"],
            ack_timeout_s=v["ack_timeout"],
            heartbeat_s=v["heartbeat"],
            low_battery=v["low_battery"],
            max_points=v["max_points"],
            max_reservations_per_address=v["max_reservations_per_address"],
            metered_time_scale=v["metered_time_scale"],
            tz=v["timezone"],
            max_parking_s=v["max_parking"],
        ),
        retain_events_s=v["retain_events"],
        vehicle_auth=v["vehicle_auth"],
        registrations_per_address=v["max_registrations_per_address"],
        limits=Limits(
            stalled_close_s=v["stalled_close"], idle_timeout_s=v["idle_timeout"], **limits
        ),
    )
    if not insecure and config.db == ":memory:" and config.keys is None:
        raise ConfigError("--db :memory: keeps no credentials: give --keys DIR (or --insecure)")
    return config
