"""``ev-broker tariffs set|assign|list|remove``: the operator's tariffs (docs/tariffs.md).

Against a running broker the request goes to its history port with an operator
credential (like ``set_availability``); with ``--db`` it is applied to the
database of a STOPPED broker (the store's lock refuses a running one). Either
way the core does the change, so it is validated, persisted and published as
``tariff.updated`` the same way. An invalid tariff file is refused with one
message naming the field, exit code 2, and nothing is stored.

Exit codes: 0 done, 1 the broker refused (unknown tariff...), 2 usage or an
invalid tariff, 3 broker unreachable.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
import zmq
import zmq.asyncio

from broker.consumers.plumbing import CredentialsOpt, HistoryPortOpt, bus_endpoint
from broker.consumers.subscriber import HistoryClient
from broker.core import Core, CoreConfig
from broker.core.effects import Persist, Publish
from broker.store import Store
from common.cli import CONTEXT, BrokerOpt
from common.errors import StoreError, TransportError
from common.tariffs import TariffInvalid, decode_tariffs

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
TIMEOUT_S = 5.0

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="EV_TARIFFS_DB",
        help="Change the database of a stopped broker instead of asking a running one.",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", envvar="EV_TARIFFS_JSON", help="Print the reply as JSON.")
]

tariffs_app = typer.Typer(
    help="Operator tariffs (OCPI 2.2.1): set, assign to points, list, remove.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=dict(CONTEXT),
)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def apply_offline(db: str, request: dict[str, Any]) -> dict[str, Any]:
    """Apply ``request`` to the database of a stopped broker, through the core; raises
    :class:`common.errors.StoreError` when the database cannot be used."""
    with Store(db) as store:
        records, last_seq = store.load()
        core = Core(CoreConfig(), lambda prefix: f"{prefix}-{uuid.uuid4().hex[:12]}")
        now = time.time()
        core.restore(records, last_seq, now)
        reply, effects = core.tariffs(
            request["action"],
            request.get("tariffs"),
            request.get("tariff_id"),
            request.get("points"),
            "local",
            now,
        )
        persists = [e for e in effects if isinstance(e, Persist)]
        events = [e.event for e in effects if isinstance(e, Publish)]
        if persists or events:
            store.write(persists, events)
        return reply


def _offline(db: str, request: dict[str, Any]) -> dict[str, Any]:
    try:
        return apply_offline(db, request)
    except StoreError as exc:
        raise _fail(exc.message, EXIT_USAGE) from None


def _online(
    broker: str, history_port: int, credentials: str | None, request: dict[str, Any]
) -> dict[str, Any]:
    endpoint = bus_endpoint(broker, 5556, history_port, credentials)

    async def ask() -> dict[str, Any]:
        ctx = zmq.asyncio.Context()
        client = HistoryClient(
            ctx, endpoint.history_url, timeout_s=TIMEOUT_S, credential=endpoint.credential
        )
        try:
            return await client.request_once(request)
        finally:
            client.close()
            ctx.term()

    try:
        return asyncio.run(ask())
    except TransportError as exc:
        if "refused" in exc.message:
            refusal = exc.message.split(": ", 1)[-1]
            code = EXIT_USAGE if refusal.startswith("invalid tariff") else EXIT_REFUSED
            raise _fail(refusal, code) from None
        raise _fail(f"broker unreachable: {exc.message}", EXIT_UNREACHABLE) from None


def _ask(
    db: str | None,
    broker: str,
    history_port: int,
    credentials: str | None,
    request: dict[str, Any],
) -> dict[str, Any]:
    reply = _offline(db, request) if db else _online(broker, history_port, credentials, request)
    if "error" in reply:
        error = str(reply["error"])
        raise _fail(error, EXIT_USAGE if error.startswith("invalid tariff") else EXIT_REFUSED)
    for warning in reply.get("warnings") or []:
        typer.echo(f"warning: {warning}", err=True)
    return reply


@tariffs_app.command("set")
def set_tariffs(
    file: Annotated[Path, typer.Argument(help="An OCPI Tariff JSON file (one or a list).")],
    broker: BrokerOpt = "127.0.0.1",
    history_port: HistoryPortOpt = 5557,
    credentials: CredentialsOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or replace tariffs from FILE (sessions starting afterwards use them)."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"cannot read {file}: {exc}", EXIT_USAGE) from None
    try:
        decode_tariffs(text.encode())  # refused here first: one message, nothing sent
    except TariffInvalid as exc:
        raise _fail(f"invalid tariff in {file}: {exc.message}", EXIT_USAGE) from None
    request = {"op": "tariffs", "action": "set", "tariffs": text}
    reply = _ask(db, broker, history_port, credentials, request)
    if as_json:
        typer.echo(json.dumps(reply))
    else:
        typer.echo(f"set {', '.join(reply.get('tariffs') or [])}")


@tariffs_app.command("assign")
def assign(
    tariff_id: Annotated[str, typer.Argument(help="The tariff id.")],
    points: Annotated[
        str,
        typer.Option(
            "--points",
            envvar="EV_TARIFF_POINTS",
            help="Point ids it prices (shell pattern, e.g. 'CP00*').",
        ),
    ],
    broker: BrokerOpt = "127.0.0.1",
    history_port: HistoryPortOpt = 5557,
    credentials: CredentialsOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Price sessions starting from now at the matching points by TARIFF_ID."""
    request = {"op": "tariffs", "action": "assign", "tariff_id": tariff_id, "points": points}
    reply = _ask(db, broker, history_port, credentials, request)
    if as_json:
        typer.echo(json.dumps(reply))
    else:
        typer.echo(f"assigned {tariff_id} to {points} ({reply.get('points', 0)} points known now)")


@tariffs_app.command("remove")
def remove(
    tariff_id: Annotated[str, typer.Argument(help="The tariff id.")],
    broker: BrokerOpt = "127.0.0.1",
    history_port: HistoryPortOpt = 5557,
    credentials: CredentialsOpt = None,
    db: DbOpt = None,
) -> None:
    """Remove a tariff and its assignments (running sessions keep their tariff)."""
    _ask(
        db,
        broker,
        history_port,
        credentials,
        {"op": "tariffs", "action": "remove", "tariff_id": tariff_id},
    )
    typer.echo(f"removed {tariff_id}")


@tariffs_app.command("list")
def list_tariffs(
    broker: BrokerOpt = "127.0.0.1",
    history_port: HistoryPortOpt = 5557,
    credentials: CredentialsOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The tariffs (OCPI JSON) and which points they price."""
    reply = _ask(db, broker, history_port, credentials, {"op": "tariffs", "action": "list"})
    if as_json:
        typer.echo(json.dumps(reply))
        return
    rules = reply.get("assignments") or []
    for t in reply.get("tariffs") or []:
        where = [r["points"] for r in rules if r["tariff_id"] == t["id"]]
        dims = sorted({c["type"] for e in t["elements"] for c in e["price_components"]})
        typer.echo(
            f"{t['id']}  {t['currency']}  {len(t['elements'])} elements  "
            f"{'/'.join(dims)}  points: {', '.join(where) or '-'}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(tariffs_app, name="tariffs")
