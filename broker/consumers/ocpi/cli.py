"""Command line of the OCPI interface: ``ev-broker ocpi`` and ``ev-broker ocpi partners``.

Only option parsing here; the work is in :mod:`broker.consumers.ocpi`. The
process's own options read ``EV_OCPI_<OPTION>``; the broker options read
``EV_BROKER``, ``EV_EVENTS_PORT``, ``EV_HISTORY_PORT`` like every consumer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.consumers.plumbing import (
    EXIT_USAGE,
    CredentialsOpt,
    EventsPortOpt,
    HistoryPortOpt,
    bus_endpoint,
    fail,
    run_until_signal,
    setup_text_logging,
)
from common.cli import CONTEXT, BrokerOpt
from common.errors import StoreError
from common.ports import EVENTS_PORT, HISTORY_PORT, VEHICLE_PORT

DEFAULT_DB = Path("var/ocpi.db")

DbOpt = Annotated[
    Path, typer.Option("--db", envvar="EV_OCPI_DB", help="The OCPI store (SQLite file).")
]

ocpi_app = typer.Typer(
    help="The OCPI 2.2.1 CPO interface; `ocpi partners` manages the eMSPs it roams with.",
    invoke_without_command=True,
    no_args_is_help=False,
    rich_markup_mode=None,
    context_settings=dict(CONTEXT),
)
partners_app = typer.Typer(
    help="Add, list and remove OCPI partners (eMSPs).",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=dict(CONTEXT),
)
ocpi_app.add_typer(partners_app, name="partners")


def _local_zone() -> str:
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and "/" in tz:
        return tz
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return "UTC"
    return target.split("zoneinfo/", 1)[-1] if "zoneinfo/" in target else "UTC"


OcpiHostOpt = Annotated[
    str, typer.Option("--host", envvar="EV_OCPI_HOST", help="Address to listen on.")
]

OcpiPortOpt = Annotated[
    int, typer.Option("--port", envvar="EV_OCPI_PORT", min=0, max=65535, help="HTTP port.")
]

OcpiPublicUrlOpt = Annotated[
    str,
    typer.Option(
        "--public-url",
        envvar="EV_OCPI_PUBLIC_URL",
        help="Base URL partners reach this server at (default http://HOST:PORT).",
    ),
]

OcpiPartyOpt = Annotated[
    str,
    typer.Option("--party", envvar="EV_OCPI_PARTY", help="This CPO's country code and party id."),
]

OcpiCountryOpt = Annotated[
    str,
    typer.Option(
        "--country", envvar="EV_OCPI_COUNTRY", help="ISO 3166 alpha-3 country of Locations."
    ),
]

OcpiCityOpt = Annotated[
    str, typer.Option("--city", envvar="EV_OCPI_CITY", help="City shown on Locations.")
]

OcpiOperatorNameOpt = Annotated[
    str, typer.Option("--operator-name", envvar="EV_OCPI_OPERATOR", help="Operator name.")
]

OcpiVehiclePortOpt = Annotated[
    int,
    typer.Option(
        "--vehicle-port",
        envvar="EV_VEHICLE_PORT",
        min=1,
        max=65535,
        help="The broker's vehicle port (commands are carried out as vehicles).",
    ),
]

OcpiBackoffOpt = Annotated[
    float,
    typer.Option(
        "--retry-initial",
        envvar="EV_OCPI_RETRY_INITIAL",
        min=0.01,
        help="First retry delay of a failed push, seconds (doubles each time).",
    ),
]

OcpiBackoffMaxOpt = Annotated[
    float,
    typer.Option(
        "--retry-max",
        envvar="EV_OCPI_RETRY_MAX",
        min=0.01,
        help="Longest retry delay of a failed push, seconds.",
    ),
]

OcpiPipelineOpt = Annotated[
    int,
    typer.Option(
        "--push-pipeline",
        envvar="EV_OCPI_PUSH_PIPELINE",
        min=1,
        max=256,
        help="Pushes written ahead of their answers on one connection (1: no pipelining).",
    ),
]

OcpiSessionRefreshOpt = Annotated[
    float,
    typer.Option(
        "--session-refresh",
        envvar="EV_OCPI_SESSION_REFRESH",
        min=0.1,
        help="How often running roaming sessions' kWh are sent to their eMSP, seconds.",
    ),
]

OcpiTokenPullOpt = Annotated[
    float,
    typer.Option(
        "--token-pull",
        envvar="EV_OCPI_TOKEN_PULL",
        min=0.1,
        help="How often eMSP tokens are pulled, seconds.",
    ),
]


@ocpi_app.callback()
def ocpi(
    ctx: typer.Context,
    broker: BrokerOpt = "127.0.0.1",
    events_port: EventsPortOpt = EVENTS_PORT,
    history_port: HistoryPortOpt = HISTORY_PORT,
    credentials: CredentialsOpt = None,
    db: DbOpt = DEFAULT_DB,
    host: OcpiHostOpt = "127.0.0.1",
    port: OcpiPortOpt = 8095,
    public_url: OcpiPublicUrlOpt = "",
    party: OcpiPartyOpt = "BR-EVC",
    country: OcpiCountryOpt = "BRA",
    city: OcpiCityOpt = "-",
    operator_name: OcpiOperatorNameOpt = "evcharge",
    vehicle_port: OcpiVehiclePortOpt = VEHICLE_PORT,
    backoff: OcpiBackoffOpt = 1.0,
    backoff_max: OcpiBackoffMaxOpt = 60.0,
    pipeline: OcpiPipelineOpt = 32,
    session_refresh: OcpiSessionRefreshOpt = 10.0,
    token_pull: OcpiTokenPullOpt = 300.0,
) -> None:
    """Serve OCPI 2.2.1 as a CPO: versions, credentials, locations, tariffs, sessions,
    cdrs, commands, tokens (see docs/ocpi.md)."""
    if ctx.invoked_subcommand is not None:
        return
    from broker.consumers.ocpi.mapping import Site
    from broker.consumers.ocpi.server import serve
    from broker.consumers.ocpi.service import OcpiConfig
    from broker.consumers.ocpi.wire import parse_party

    try:
        cc, pid = parse_party(party)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if len(country) != 3 or not country.isalpha():
        raise fail(f"--country {country!r}: expected ISO 3166 alpha-3, e.g. BRA", EXIT_USAGE)
    endpoint = bus_endpoint(broker, events_port, history_port, credentials)
    site = Site(cc, pid, country.upper(), city, _local_zone(), operator_name)
    cfg = OcpiConfig(
        endpoint, str(db), public_url.rstrip("/"), site, vehicle_host=broker,
        vehicle_port=vehicle_port, backoff_initial=backoff, backoff_max=backoff_max,
        token_pull_s=token_pull, pipeline=pipeline, session_refresh_s=session_refresh,
    )  # fmt: skip
    setup_text_logging(logging.WARNING)

    def ready(bound: int) -> None:
        typer.echo(f"ocpi ready: http://{host}:{bound}/ocpi/versions as {cc}-{pid}")

    async def main(stop: asyncio.Event) -> None:
        await serve(cfg, host, port, stop, ready)

    try:
        run_until_signal(main)
    except StoreError as exc:
        raise fail(str(exc), 1) from exc
    except OSError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc


def _store(ctx: typer.Context, db: Path | None) -> object:
    return _store_of(ctx.parent.parent if ctx.parent else None, db)


def _store_of(ocpi_ctx: Any, db: Path | None) -> object:
    """``--db`` of the subcommand, else the one given to ``ocpi`` itself, else the default."""
    from broker.consumers.ocpi.store import OcpiStore

    path = db or (ocpi_ctx.params.get("db") if ocpi_ctx else None)
    try:
        return OcpiStore(str(path or DEFAULT_DB))
    except StoreError as exc:
        raise fail(str(exc), 1) from exc


PartnerDbOpt = Annotated[
    Path | None,
    typer.Option("--db", envvar="EV_OCPI_DB", help="The OCPI store (SQLite file)."),
]


@partners_app.command("add")
def partners_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for the eMSP.")],
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="EV_OCPI_PARTNER_URL",
            help="Their versions URL: we register with them (needs --token).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="EV_OCPI_PARTNER_TOKEN", help="The token A they gave us (with --url)."
        ),
    ] = None,
    db: PartnerDbOpt = None,
) -> None:
    """Add an eMSP. Without --url: prints the token A it registers with (shown once).
    With --url and --token: the running server registers with them within seconds."""
    from broker.consumers.ocpi.store import OcpiStore
    from broker.consumers.ocpi.wire import new_token

    if bool(url) != bool(token):
        raise fail("--url and --token go together", EXIT_USAGE)
    store = _store(ctx, db)
    assert isinstance(store, OcpiStore)
    try:
        if url:
            store.add_partner(name, url=url, their_token=token)
            typer.echo(f"partner {name} added: registering with {url}")
        else:
            token_a = new_token()
            store.add_partner(name, token_a=token_a)
            typer.echo(f"partner {name} added; token A (shown once): {token_a}")
    except StoreError as exc:
        raise fail(exc.message, 1) from None
    finally:
        store.close()


@partners_app.command("list")
def partners_list(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", envvar="EV_OCPI_JSON", help="JSON lines.")
    ] = False,
    db: PartnerDbOpt = None,
) -> None:
    """Partners, their state and their undelivered pushes (never a token)."""
    from broker.consumers.ocpi.store import OcpiStore

    store = _store(ctx, db)
    assert isinstance(store, OcpiStore)
    try:
        counts = store.queue_counts()
        for p in store.partners():
            pending, failed = counts.get(p.name, (0, 0))
            party = f"{p.country_code or '?'}-{p.party_id or '?'}"
            row = {
                "name": p.name, "state": p.state, "party": party,
                "versions_url": p.versions_url, "modules": sorted(p.endpoints),
                "pending": pending, "failed": failed, "last_error": p.last_error,
            }  # fmt: skip
            if as_json:
                typer.echo(json.dumps(row))
            else:
                typer.echo(
                    f"{p.name}\t{p.state}\t{row['party']}\tpending {pending}\tfailed {failed}"
                    + (f"\t{p.last_error}" if p.last_error else "")
                )
    finally:
        store.close()


@partners_app.command("remove")
def partners_remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The eMSP's name.")],
    db: PartnerDbOpt = None,
) -> None:
    """Remove an eMSP: its tokens stop working and its undelivered pushes are dropped."""
    from broker.consumers.ocpi.store import OcpiStore

    store = _store(ctx, db)
    assert isinstance(store, OcpiStore)
    try:
        if not store.remove_partner(name):
            raise fail(f"no partner {name!r}", 1)
        typer.echo(f"partner {name} removed")
    finally:
        store.close()


@ocpi_app.command("tokens")
def tokens_list(
    ctx: typer.Context,
    authorized: Annotated[
        bool,
        typer.Option(
            "--authorized",
            envvar="EV_OCPI_AUTHORIZED",
            help="Only the uids a charger may start with (valid, whitelist not NEVER), one a "
            "line: the idTags to authorize at a charger gateway.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", envvar="EV_OCPI_JSON", help="JSON lines.")
    ] = False,
    idtags: Annotated[
        bool,
        typer.Option(
            "--idtags",
            envvar="EV_OCPI_IDTAGS",
            help="With --authorized: as [[idtag]] tables for an OCPP gateway's chargers file.",
        ),
    ] = False,
    db: PartnerDbOpt = None,
) -> None:
    """The eMSP tokens pulled and cached (or pushed by the eMSPs)."""
    from broker.consumers.ocpi.store import OcpiStore
    from station.ocpp.guard import IDTAG_RE

    store = _store_of(ctx.parent, db)
    assert isinstance(store, OcpiStore)
    try:
        for t in store.tokens():
            ok = bool(t.get("valid")) and t.get("whitelist") != "NEVER"
            if authorized:
                if ok and idtags and IDTAG_RE.match(t["uid"]):
                    typer.echo(
                        f'[[idtag]]\nid = "{t["uid"]}"  # {t["country_code"]}-{t["party_id"]}\n'
                    )
                elif ok and not idtags:
                    typer.echo(t["uid"])
            elif as_json:
                typer.echo(json.dumps(t))
            else:
                typer.echo(
                    f"{t['country_code']}-{t['party_id']}\t{t['uid']}\t{t['type']}\t"
                    f"{'valid' if t.get('valid') else 'invalid'}\t{t.get('whitelist')}"
                )
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    """Add ``ocpi`` to ``app``."""
    app.add_typer(ocpi_app, name="ocpi")
