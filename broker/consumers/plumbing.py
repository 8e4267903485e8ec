"""What the bus consumers' command lines share: options, exit codes, signals, logging.

Used by ``billing``, ``tail``, ``monitor`` (:mod:`broker.consumers.cli`), ``bridge``
(:mod:`broker.consumers.bridge.cli`) and ``web`` (:mod:`broker.consumers.web.cli`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Final

import typer

from broker.consumers.subscriber import Endpoint
from common.cli import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    EventsPortOpt,
    HistoryPortOpt,
)
from common.credentials import load_optional
from common.errors import ConfigError
from common.logging_setup import setup_logging
from common.runner import run

__all__ = [
    "EXIT_DIFFERENT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "EventsPortOpt",
    "HistoryPortOpt",
]

EXIT_DIFFERENT: Final = EXIT_FAILED  # reconcile: the ledger differs from the broker
FIGURES_S: Final = 10.0  # how often the billing worker and the bridge log their figures

CredentialsOpt = Annotated[
    str | None,
    typer.Option(
        "--credentials",
        envvar="EV_CREDENTIALS",
        help="A consumer or operator .cred file (needed unless the broker runs --insecure).",
    ),
]
StreamOpt = Annotated[
    str, typer.Option("--stream", envvar="EV_STREAM", help="JetStream stream name.")
]


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def setup_text_logging(level: int) -> None:
    setup_logging("text", level)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` (asyncio's own loop) with SIGINT/SIGTERM setting ``stop``."""
    run(main, fast_loop=False)


async def log_figures(
    log: logging.Logger, line: str, figures: Callable[[], tuple[int, ...]]
) -> None:
    """Every FIGURES_S, log ``line % figures()`` when the figures changed (until cancelled)."""
    shown: tuple[int, ...] = ()
    while True:
        await asyncio.sleep(FIGURES_S)
        now = figures()
        if now != shown:
            log.info(line, *now)
            shown = now


def bus_endpoint(
    broker: str, events_port: int, history_port: int, credentials: str | None
) -> Endpoint:
    if not broker or any(c.isspace() for c in broker):
        raise fail(f"invalid --broker host {broker!r}", EXIT_USAGE)
    try:
        credential = load_optional(credentials)
    except ConfigError as exc:
        raise fail(exc.message, EXIT_USAGE) from None
    if credential is not None and credential.role not in ("consumer", "operator"):
        raise fail(
            f"--credentials {credentials}: a {credential.role} credential cannot read the bus; "
            "issue one with --role consumer",
            EXIT_USAGE,
        )
    if credential is None:
        logging.getLogger("broker").warning(
            "no --credentials: only a broker started with --insecure will answer"
        )
    return Endpoint(broker, events_port, history_port, credential)
