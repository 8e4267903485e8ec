"""Command line of the bus consumers: ``billing`` (+ report, reconcile), ``tail``, ``monitor``.

Only option parsing and process plumbing live here (signals, exit codes,
logging); the work is done by :mod:`broker.consumers.billing.worker`,
:mod:`broker.consumers.tail` and :mod:`broker.consumers.monitor.live`.
Every option also reads ``EV_<OPTION_NAME>``.
SIGINT/SIGTERM stop a long-running command within 2 s with exit code 0.
Environment names are prefixed with the command where a plain one would
mean something else elsewhere (``EV_BILLING_DB``, ``EV_TAIL_JSON``...).
Exit codes: 0 done, 1 reconciliation found differences, 2 usage or
configuration error, 3 broker unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from broker.consumers.billing import worker as billing
from broker.consumers.billing.backends import open_ledger
from broker.consumers.billing.ledger import LedgerBase
from broker.consumers.bridge import subjects
from broker.consumers.monitor.live import run_monitor
from broker.consumers.plumbing import (
    EXIT_DIFFERENT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CredentialsOpt,
    EventsPortOpt,
    HistoryPortOpt,
    StreamOpt,
    bus_endpoint,
    fail,
    log_figures,
    run_until_signal,
    setup_text_logging,
)
from broker.consumers.subscriber import Endpoint, HistoryClient, Subscriber
from broker.consumers.tail import PipeClosed, TailSink, pipe_closed
from common.cli import CONTEXT, BrokerOpt
from common.errors import ConfigError, EVError, StoreError, TransportError
from common.ports import EVENTS_PORT, HISTORY_PORT

DbOpt = Annotated[
    Path, typer.Option("--db", envvar="EV_BILLING_DB", help="Billing ledger (SQLite file).")
]
LedgerOpt = Annotated[
    str | None,
    typer.Option(
        "--ledger",
        envvar="EV_LEDGER",
        help="Billing ledger: a postgresql:// URL or a SQLite file (default: --db).",
    ),
]
DEFAULT_DB = Path("var/billing.db")


class ReportFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    ocpi = "ocpi"


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


async def _until_stopped(sub: Subscriber, stop: asyncio.Event) -> None:
    """Run ``sub`` until ``stop`` is set or it fails; re-raise its failure."""
    task = asyncio.create_task(sub.run())
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _open_ledger(db: Path, create: bool, ledger: str | None = None) -> LedgerBase:
    try:
        return open_ledger(ledger or db, create=create)
    except (ConfigError, StoreError) as exc:
        raise fail(str(exc), EXIT_USAGE) from exc


# --- billing ------------------------------------------------------------------------

billing_app = typer.Typer(
    help="The billing subscriber; `billing report` and `billing reconcile` read its ledger.",
    invoke_without_command=True,
    no_args_is_help=False,
    rich_markup_mode=None,
    context_settings=dict(CONTEXT),
)


@billing_app.callback()
def billing_worker(
    ctx: typer.Context,
    broker: BrokerOpt = "127.0.0.1",
    events_port: EventsPortOpt = EVENTS_PORT,
    history_port: HistoryPortOpt = HISTORY_PORT,
    db: DbOpt = DEFAULT_DB,
    credentials: CredentialsOpt = None,
    ledger_target: LedgerOpt = None,
    source: Annotated[
        str,
        typer.Option(
            "--source",
            envvar="EV_SOURCE",
            help="'bus' (the broker's ZeroMQ bus, one region) or a nats:// URL (JetStream).",
        ),
    ] = "bus",
    regions: Annotated[
        str | None,
        typer.Option(
            "--regions", envvar="EV_BILLING_REGIONS", help="JetStream: only these regions (a,b)."
        ),
    ] = None,
    stream: StreamOpt = subjects.DEFAULT_STREAM,
) -> None:
    """Run the billing worker: catch up from history, then follow live events.

    With --source nats://HOST:PORT it is a durable JetStream consumer of every
    region's charging.completed instead (see docs/scale.md).
    """
    if ctx.invoked_subcommand is not None:
        return
    if source != "bus":
        _billing_from_jetstream(db, ledger_target, source, regions, stream)
        return
    if regions is not None:
        raise fail("--regions needs --source nats://...", EXIT_USAGE)
    setup_text_logging(logging.INFO)
    endpoint = bus_endpoint(broker, events_port, history_port, credentials)
    ledger = _open_ledger(db, create=True, ledger=ledger_target)
    sink = billing.BillingSink(ledger)
    sub = Subscriber(endpoint, sink, topics=(billing.TOPIC,), start_seq=ledger.last_seq)

    async def main(stop: asyncio.Event) -> None:
        typer.echo(f"billing ready: ledger {ledger.location} from seq {ledger.last_seq}")

        async def caught_up() -> None:
            log = logging.getLogger("broker.billing")
            await sub.ready.wait()
            log.info("caught up at seq %d, %d sessions billed", sub.stats.applied_seq, sink.billed)
            st = sub.stats
            await log_figures(  # the subscriber's figures, when they change
                log,
                "seq %d lag %d gaps %d lost %d duplicates %d billed %d invalid %d",
                lambda: (
                    st.applied_seq, st.lag, st.gaps, st.lost, st.duplicates, sink.billed,
                    sink.invalid,
                ),
            )  # fmt: skip

        note = asyncio.create_task(caught_up())
        try:
            await _until_stopped(sub, stop)
        finally:
            note.cancel()

    try:
        run_until_signal(main)
    except StoreError as exc:
        raise fail(str(exc), 1) from exc
    finally:
        with contextlib.suppress(EVError):
            sink.flush()
        ledger.close()
    typer.echo(f"billing stopped at seq {sub.stats.applied_seq} ({sink.billed} new sessions)")


def _ledger_path(ctx: typer.Context, db: Path) -> Path:
    """``--db`` of the subcommand, else the one given to ``billing`` itself."""
    from typer._click.core import ParameterSource

    if ctx.get_parameter_source("db") in (ParameterSource.DEFAULT, None) and ctx.parent:
        parent_db = ctx.parent.params.get("db")
        if isinstance(parent_db, Path):
            return parent_db
    return db


def _billing_from_jetstream(
    db: Path, ledger_target: str | None, url: str, regions: str | None, stream: str
) -> None:
    try:
        subjects.check_nats_url(url)
        region_list = subjects.parse_regions(regions)
        subjects.check_stream(stream)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    from broker.consumers.billing.jetstream import JetStreamBilling  # nats-py only when used

    setup_text_logging(logging.INFO)
    ledger = _open_ledger(db, create=True, ledger=ledger_target)
    worker = JetStreamBilling(url, ledger, stream=stream, regions=region_list)
    log = logging.getLogger("broker.billing")

    async def main(stop: asyncio.Event) -> None:
        async def note() -> None:
            await worker.ready.wait()
            names = ", ".join(name for name, _ in worker.consumers)
            typer.echo(
                f"billing ready: ledger {ledger.location} from {url} stream {stream} ({names})"
            )
            st = worker.stats
            await log_figures(
                log,
                "messages %d billed %d replayed %d invalid %d restarts %d",
                lambda: (st.messages, st.billed, st.replayed, st.invalid, st.restarts),
            )

        task = asyncio.create_task(note())
        try:
            await worker.run(stop)
        finally:
            task.cancel()

    try:
        run_until_signal(main)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    except StoreError as exc:
        raise fail(str(exc), 1) from exc
    finally:
        ledger.close()
    typer.echo(f"billing stopped ({worker.stats.billed} new sessions)")


@billing_app.command("report")
def billing_report(
    ctx: typer.Context,
    db: DbOpt = DEFAULT_DB,
    ledger_target: LedgerOpt = None,
    vehicle: Annotated[
        str | None,
        typer.Option("--vehicle", envvar="EV_REPORT_VEHICLE", help="Only this vehicle."),
    ] = None,
    fmt: Annotated[
        ReportFormat,
        typer.Option("--format", envvar="EV_REPORT_FORMAT", help="Output format."),
    ] = ReportFormat.table,
) -> None:
    """Per-vehicle totals and session lines from the ledger."""
    with _open_ledger(_ledger_path(ctx, db), create=False, ledger=ledger_target) as ledger:
        accounts = ledger.accounts(vehicle)
    billing.render_report(accounts, fmt.value, Console(soft_wrap=fmt != ReportFormat.table))


@billing_app.command("reconcile")
def billing_reconcile(
    ctx: typer.Context,
    brokers: Annotated[
        list[str] | None,
        typer.Option(
            "--broker",
            envvar="EV_BROKER",
            help="Broker HOST or HOST:PORT (history port); repeat for one broker per region.",
        ),
    ] = None,
    history_port: HistoryPortOpt = HISTORY_PORT,
    db: DbOpt = DEFAULT_DB,
    ledger_target: LedgerOpt = None,
    fmt: Annotated[
        OutputFormat,
        typer.Option("--format", envvar="EV_RECONCILE_FORMAT", help="Output format."),
    ] = OutputFormat.table,
    timeout: Annotated[
        float,
        typer.Option("--timeout", envvar="EV_RECONCILE_TIMEOUT", min=0.1, help="Seconds to wait."),
    ] = 3.0,
    credentials: Annotated[
        list[str] | None,
        typer.Option(
            "--credentials",
            envvar="EV_CREDENTIALS",
            help="A consumer .cred file; repeat for one per --broker (each broker has its key).",
        ),
    ] = None,
) -> None:
    """Compare the ledger with the brokers' accounts: exit 0 when equal, 1 when not."""
    hosts = brokers or ["127.0.0.1"]
    creds = list(credentials or [])
    if len(creds) not in (0, 1, len(hosts)):
        raise fail("give one --credentials, or one per --broker (in the same order)", EXIT_USAGE)
    paired: list[str | None] = [*creds] * len(hosts) if len(creds) == 1 else [*creds]
    if not paired:
        paired = [None] * len(hosts)
    endpoints = [_history_endpoint(b, history_port, c) for b, c in zip(hosts, paired, strict=True)]
    with _open_ledger(_ledger_path(ctx, db), create=False, ledger=ledger_target) as ledger:
        mine = ledger.accounts()

    async def fetch() -> list[dict[str, Any]]:
        import zmq.asyncio

        ctx = zmq.asyncio.Context()
        clients = [
            HistoryClient(ctx, e.history_url, timeout_s=timeout, credential=e.credential)
            for e in endpoints
        ]
        try:
            return list(
                await asyncio.gather(
                    *(billing.fetch_accounts(e, c) for e, c in zip(endpoints, clients, strict=True))
                )
            )
        finally:
            for c in clients:
                c.close()
            ctx.term()

    try:
        theirs = billing.merge_accounts(asyncio.run(fetch()))
    except TransportError as exc:
        raise fail(str(exc), EXIT_UNREACHABLE) from exc
    rec = billing.reconcile(mine, theirs)
    billing.render_reconciliation(rec, fmt.value, Console(soft_wrap=True))
    if not rec.equal:
        raise typer.Exit(EXIT_DIFFERENT)


def _history_endpoint(text: str, default_port: int, credentials: str | None) -> Endpoint:
    """``HOST`` or ``HOST:PORT`` (the history port) as an endpoint."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return bus_endpoint(text, EVENTS_PORT, default_port, credentials)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise fail(f"invalid --broker {text!r}: expected HOST or HOST:PORT", EXIT_USAGE)
    return bus_endpoint(host, EVENTS_PORT, int(port), credentials)


# --- tail ---------------------------------------------------------------------------


def tail(
    broker: BrokerOpt = "127.0.0.1",
    events_port: EventsPortOpt = EVENTS_PORT,
    history_port: HistoryPortOpt = HISTORY_PORT,
    topic: Annotated[
        list[str] | None,
        typer.Option("--topic", envvar="EV_TAIL_TOPIC", help="Topic prefix (repeatable)."),
    ] = None,
    since: Annotated[
        int | None,
        typer.Option(
            "--since", envvar="EV_TAIL_SINCE", min=0, help="Replay events with seq > SEQ first."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", envvar="EV_TAIL_JSON", help="One JSON object per line.")
    ] = False,
    credentials: CredentialsOpt = None,
) -> None:
    """Print bus events as they arrive (history first with --since)."""
    setup_text_logging(logging.WARNING)
    endpoint = bus_endpoint(broker, events_port, history_port, credentials)
    sink = TailSink(sys.stdout, as_json=as_json)
    sub = Subscriber(endpoint, sink, topics=tuple(topic or ()), start_seq=since)

    async def main(stop: asyncio.Event) -> None:
        async def watch_pipe() -> None:
            while not stop.is_set():
                if pipe_closed(sys.stdout):
                    stop.set()
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch_pipe())
        try:
            await _until_stopped(sub, stop)
        finally:
            watcher.cancel()

    with contextlib.suppress(PipeClosed):
        run_until_signal(main)
    if pipe_closed(sys.stdout) or sys.stdout.closed:
        # nothing more can be written: keep interpreter shutdown from complaining
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# --- monitor ------------------------------------------------------------------------


def monitor(
    broker: BrokerOpt = "127.0.0.1",
    events_port: EventsPortOpt = EVENTS_PORT,
    history_port: HistoryPortOpt = HISTORY_PORT,
    page_size: Annotated[
        int,
        typer.Option(
            "--page-size", envvar="EV_MONITOR_PAGE_SIZE", min=1, max=1000, help="Points per page."
        ),
    ] = 20,
    credentials: CredentialsOpt = None,
) -> None:
    """A live terminal view of all points, built from snapshot + events."""
    setup_text_logging(logging.WARNING)
    endpoint = bus_endpoint(broker, events_port, history_port, credentials)

    async def main(stop: asyncio.Event) -> None:
        await run_monitor(endpoint, stop, page_size)

    try:
        run_until_signal(main)
    except EVError as exc:
        raise fail(str(exc), 1) from exc


def register(app: typer.Typer) -> None:
    """Add ``billing`` (with ``report`` and ``reconcile``), ``tail`` and ``monitor`` to ``app``."""
    app.add_typer(billing_app, name="billing")
    app.command("tail")(tail)
    app.command("monitor")(monitor)
