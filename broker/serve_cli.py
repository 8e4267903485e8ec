"""`ev-broker serve`: options (each also from ``EV_<OPTION>``), validation, run loop.

Options are read as text and validated here, so a bad value gets one clear
line on stderr and exit code 2 (the usage-error code), never a traceback.
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.serve_options import (
    DEFAULT_DB,
    LOG_OPTIONS,
    OPTIONS,
    Option,
    app_config,
    option_info,
    read_all,
)
from common.cli import EXIT_FAILED, EXIT_USAGE
from common.errors import ConfigError, EVError, StoreError
from common.logging_setup import setup_logging

log = logging.getLogger("broker")


def _param(name: str, option: Option[Any]) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=option.default,
        annotation=Annotated[str, option_info(option.env, option.help, option.metavar)],
    )


KEYS = inspect.Parameter(
    "keys",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        str | None,
        option_info("EV_KEYS", "Folder of broker.key (default: the database's folder).", "DIR"),
    ],
)
INSECURE = inspect.Parameter(
    "insecure",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[
        bool,
        typer.Option(
            "--insecure",
            envvar="EV_INSECURE",
            show_envvar=True,
            help="Lab only: no station, status or consumer authentication (logs a warning).",
        ),
    ],
)


def serve(**texts: Any) -> None:
    """Run the broker service until SIGINT or SIGTERM."""
    insecure = bool(texts.pop("insecure"))
    keys = texts.pop("keys")
    try:
        values = read_all(texts)
        config = app_config(values, insecure=insecure, keys=keys)
    except ConfigError as exc:
        typer.echo(f"ev-broker serve: {exc.message}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    setup_logging(values["log_format"], values["log_level"])
    raise typer.Exit(run(config))


# the command's options, declared once in broker.serve_options (--help shows them in order)
_PARAMS = [
    *(_param(name, option) for name, option in OPTIONS.items()),
    KEYS,
    INSECURE,
    *(_param(name, option) for name, option in LOG_OPTIONS.items()),
]
serve.__signature__ = inspect.Signature(_PARAMS, return_annotation=None)  # type: ignore[attr-defined]  # typer reads the signature
serve.__annotations__ = {p.name: p.annotation for p in _PARAMS} | {"return": None}


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
        Path,
        option_info("EV_DB", "The running broker's SQLite file (ev-broker serve --db).", "PATH"),
    ] = Path(DEFAULT_DB),
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
        raise typer.Exit(EXIT_USAGE) from None
    except EVError as exc:
        typer.echo(f"ev-broker backup: {exc.message}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(
        f"backup: {result.path} ({result.bytes} bytes, {result.events} events, "
        f"last seq {result.last_seq})"
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``backup`` to the ``ev-broker`` app."""
    app.command("serve")(serve)
    app.command("backup")(backup)
