"""`ev-broker sites set|list|remove`: the sites that share a grid connection.

Against a running broker over its history socket (an ``operator`` credential
for changes unless it runs ``--insecure``), or with ``--db`` on the database
of a stopped broker. Exit codes: 0 done, 1 refused (nothing stored) or the
database cannot be used, 2 usage error, 3 broker unreachable.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from broker import sites_admin
from broker.consumers.subscriber import Endpoint
from common.cli import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, BrokerOpt, HistoryPortOpt
from common.credentials import load_optional
from common.errors import ConfigError, SiteRefused, StoreError, TransportError
from common.ports import HISTORY_PORT

sites_app = typer.Typer(
    help="Sites: points sharing one grid connection, with a power limit.",
    no_args_is_help=True,
)

CredentialsOpt = Annotated[
    str | None,
    typer.Option(
        "--credentials",
        envvar="EV_CREDENTIALS",
        help="An operator .cred file (needed unless the broker runs --insecure).",
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="EV_DB",
        help="Change the database of a STOPPED broker instead of asking a running one.",
    ),
]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"ev-broker sites: {message}", err=True)
    return typer.Exit(code)


def _do(
    request: dict[str, Any], broker: str, history_port: int, credentials: str | None, db: str | None
) -> dict[str, Any]:
    try:
        if db is not None:
            return sites_admin.offline(db, request)
        if not broker or any(c.isspace() for c in broker):
            raise _fail(f"invalid --broker host {broker!r}", EXIT_USAGE)
        credential = load_optional(credentials)
        endpoint = Endpoint(broker, 5556, history_port, credential)
        return sites_admin.online(endpoint, request)
    except SiteRefused as exc:
        raise _fail(f"refused: {exc.message}", EXIT_FAILED) from None
    except ConfigError as exc:
        raise _fail(exc.message, EXIT_USAGE) from None
    except StoreError as exc:
        raise _fail(exc.message, EXIT_FAILED) from None
    except TransportError as exc:
        raise _fail(exc.message, EXIT_UNREACHABLE) from None


@sites_app.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="Site name (1-64 characters, no spaces).")],
    limit_kw: Annotated[
        float,
        typer.Option(
            "--limit-kw", envvar="EV_SITE_LIMIT_KW", help="The most the site may draw, kW (> 0)."
        ),
    ],
    points: Annotated[
        list[str],
        typer.Option(
            "--points",
            envvar="EV_SITE_POINTS",
            help="Point id or PREFIX* (repeatable).",
            show_default=False,
        ),
    ],
    min_kw: Annotated[
        float | None,
        typer.Option(
            "--min-kw",
            envvar="EV_SITE_MIN_KW",
            help="Least power of a running session, kW (default 4.2).",
        ),
    ] = None,
    broker: BrokerOpt = "127.0.0.1",
    history_port: HistoryPortOpt = HISTORY_PORT,
    credentials: CredentialsOpt = None,
    db: DbOpt = None,
) -> None:
    """Define a site or change it (applied within 2 s; sessions are re-shared)."""
    request: dict[str, Any] = {
        "op": "set_site",
        "name": name,
        "limit_kw": limit_kw,
        "points": points,
    }
    if min_kw is not None:
        request["min_kw"] = min_kw
    reply = _do(request, broker, history_port, credentials, db)
    site = reply.get("site") or {}
    typer.echo(
        f"site {name}: {site.get('limit_kw', limit_kw):g} kW over {' '.join(points)} "
        f"(min {site.get('min_kw', min_kw or 4.2):g} kW per session)"
    )


@sites_app.command("list")
def list_(
    as_json: Annotated[
        bool, typer.Option("--json", envvar="EV_SITES_JSON", help="One JSON document.")
    ] = False,
    broker: BrokerOpt = "127.0.0.1",
    history_port: HistoryPortOpt = HISTORY_PORT,
    credentials: CredentialsOpt = None,
    db: DbOpt = None,
) -> None:
    """Every site with its limit, allocation and sessions."""
    reply = _do({"op": "sites"}, broker, history_port, credentials, db)
    sites = reply.get("sites") or []
    if as_json:
        typer.echo(json.dumps(sites, ensure_ascii=False, indent=2))
        return
    for line in sites_admin.render(sites):
        typer.echo(line)


@sites_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="Site name.")],
    broker: BrokerOpt = "127.0.0.1",
    history_port: HistoryPortOpt = HISTORY_PORT,
    credentials: CredentialsOpt = None,
    db: DbOpt = None,
) -> None:
    """Remove a site: its points are unlimited again."""
    _do({"op": "remove_site", "name": name}, broker, history_port, credentials, db)
    typer.echo(f"site {name} removed")


def register(app: typer.Typer) -> None:
    """Add ``sites`` (``set``, ``list``, ``remove``) to the ``ev-broker`` app."""
    app.add_typer(sites_app, name="sites")
