"""`ev-broker credentials add|list|revoke|ensure`: issue, show and end credentials.

``ensure`` is ``add`` for deployments that provision on every start: it keeps a
live credential whose ``.cred`` file is present and issues it otherwise.

They write the broker's database (or, for a ``:memory:`` broker, the keys
folder's ``credentials.db``) beside a running broker, which picks the change
up within 2 s. ``add`` makes ``broker.key`` first if it does not exist yet, so
credentials can be issued before the broker's first start.
Exit codes: 0 done, 1 nothing to revoke or the database cannot be used,
2 usage error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from broker.credentials import (
    BrokerKeys,
    CredentialTable,
    broker_keys,
    check_name,
    credentials_db_for,
    ensure,
    issue,
    keys_dir_for,
)
from common.cli import EXIT_FAILED, EXIT_USAGE
from common.credentials import ROLES
from common.errors import ConfigError, StoreError

credentials_app = typer.Typer(
    help="Credentials of stations and consumers (written to the broker's database).",
    no_args_is_help=True,
)

DbOpt = Annotated[
    str, typer.Option("--db", envvar="EV_DB", help="The broker's database.", show_envvar=True)
]
KeysOpt = Annotated[
    str | None,
    typer.Option(
        "--keys",
        envvar="EV_KEYS",
        help="Folder of broker.key (default: the database's folder).",
        show_envvar=True,
    ),
]
DEFAULT_DB = "./var/broker.db"

T = TypeVar("T")


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"ev-broker credentials: {message}", err=True)
    return typer.Exit(code)


def _table(db: str, keys: str | None) -> tuple[CredentialTable, Path]:
    try:
        keys_dir = keys_dir_for(db, keys)
        return CredentialTable(credentials_db_for(db, keys_dir)), keys_dir
    except ConfigError as exc:
        raise _fail(exc.message, EXIT_USAGE) from None
    except StoreError as exc:
        raise _fail(exc.message, EXIT_FAILED) from None


NameArg = Annotated[str, typer.Argument(help="Credential name (also the .cred file's name).")]
RoleOpt = Annotated[
    str,
    typer.Option(
        "--role",
        envvar="EV_CREDENTIAL_ROLE",
        help=f"One of: {', '.join(ROLES)}.",
        show_default=False,
    ),
]
PointsOpt = Annotated[
    str | None,
    typer.Option(
        "--points",
        envvar="EV_CREDENTIAL_POINTS",
        help="Point id, or PREFIX* (station and legacy-station).",
    ),
]
SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source",
        envvar="EV_CREDENTIAL_SOURCE",
        help="IP the datagrams come from (legacy-station).",
    ),
]
OutOpt = Annotated[
    str | None,
    typer.Option(
        "--out",
        envvar="EV_CREDENTIAL_OUT",
        help="Folder for NAME.cred (default: the keys folder).",
    ),
]

# issue() or ensure(): (table, broker keys, name, role, points, source, out folder)
Provision = Callable[[CredentialTable, BrokerKeys, str, str, str | None, str | None, Path], T]


def _provisioning(
    make: Provision[T], said: Callable[[str, str, T, Path], str]
) -> Callable[..., None]:
    """A command that runs ``make`` and prints ``said(name, role, result, out folder)``.

    ``make``'s usage errors exit 2, store errors 1.
    """

    def command(
        name: NameArg,
        role: RoleOpt,
        points: PointsOpt = None,
        source: SourceOpt = None,
        db: DbOpt = DEFAULT_DB,
        keys: KeysOpt = None,
        out: OutOpt = None,
    ) -> None:
        table, keys_dir = _table(db, keys)
        try:
            out_dir = Path(out) if out else keys_dir
            check_name(name)
            made = make(table, broker_keys(keys_dir), name, role, points, source, out_dir)
        except ConfigError as exc:
            raise _fail(exc.message, EXIT_USAGE) from None
        except StoreError as exc:
            raise _fail(exc.message, EXIT_FAILED) from None
        finally:
            table.close()
        typer.echo(said(name, role, made, out_dir))

    return command


credentials_app.command(
    "add", help="Issue a credential: record it and write OUT/NAME.cred (mode 0600)."
)(_provisioning(issue, lambda name, role, path, _: f"credential {name} ({role}) written to {path}"))
credentials_app.command(
    "ensure",
    help="Like add, but keep a live credential whose .cred file is present (for deployments).",
)(
    _provisioning(
        ensure,
        lambda name, role, made, out_dir: (
            f"credential {name} ({role}) {'written to' if made else 'kept in'} "
            f"{out_dir / (name + '.cred')}"
        ),
    )
)


@credentials_app.command("list")
def list_(
    db: DbOpt = DEFAULT_DB,
    keys: KeysOpt = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", envvar="EV_CREDENTIALS_JSON", help="One JSON object per line."),
    ] = False,
) -> None:
    """Show every credential (never a secret)."""
    table, _ = _table(db, keys)
    try:
        records = table.records()
    except StoreError as exc:
        raise _fail(exc.message, EXIT_FAILED) from None
    finally:
        table.close()
    if as_json:
        for rec in records:
            typer.echo(json.dumps(rec.listing()))
        return
    if not records:
        typer.echo("no credentials")
        return
    typer.echo(f"{'NAME':<24} {'ROLE':<15} {'POINTS':<16} {'SOURCE':<15} {'STATE':<8} KEY")
    for rec in records:
        state = "live" if rec.live else "revoked"
        typer.echo(
            f"{rec.name:<24} {rec.role:<15} {rec.points or '-':<16} {rec.source or '-':<15} "
            f"{state:<8} {rec.curve_public[:12]}..."
        )


@credentials_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="Credential to end.")],
    db: DbOpt = DEFAULT_DB,
    keys: KeysOpt = None,
) -> None:
    """End a credential; a running broker refuses it within 2 s."""
    try:
        check_name(name)
    except ConfigError as exc:
        raise _fail(exc.message, EXIT_USAGE) from None
    table, _ = _table(db, keys)
    try:
        done = table.revoke(name)
    except StoreError as exc:
        raise _fail(exc.message, EXIT_FAILED) from None
    finally:
        table.close()
    if not done:
        raise _fail(f"no live credential named {name!r}", EXIT_FAILED)
    typer.echo(f"credential {name} revoked at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")


def register(app: typer.Typer) -> None:
    """Add ``credentials`` (``add``, ``list``, ``revoke``) to the ``ev-broker`` app."""
    app.add_typer(credentials_app, name="credentials")
