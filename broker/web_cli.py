"""Command line of the operator web console: ``ev-broker web``.

Only option parsing and process plumbing live here; the work is done by
:mod:`broker.web`. Every option also reads ``EV_<OPTION_NAME>`` (the token
reads ``EV_WEB_TOKEN``). SIGINT/SIGTERM stop it with exit code 0.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from broker.consumers_cli import (
    EXIT_USAGE,
    BrokerOpt,
    EventsPortOpt,
    HistoryPortOpt,
    _endpoint,
    _fail,
    _run,
    _setup_logging,
)
from broker.web.auth import new_token
from broker.web.server import WebConfig, console_url, serve


def web(
    broker: BrokerOpt = "127.0.0.1",
    events_port: EventsPortOpt = 5556,
    history_port: HistoryPortOpt = 5557,
    host: Annotated[
        str, typer.Option("--host", envvar="EV_WEB_HOST", help="Address the console listens on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", envvar="EV_WEB_PORT", min=0, max=65535, help="HTTP port.")
    ] = 8088,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="EV_WEB_TOKEN",
            help="Access token (random, printed in the URL, when not given).",
            show_default=False,
        ),
    ] = None,
    tiles: Annotated[
        str,
        typer.Option(
            "--tiles",
            envvar="EV_WEB_TILES",
            help="Map tile URL template ({z}/{x}/{y}); empty: markers only, works offline.",
        ),
    ] = "",
) -> None:
    """The operator web console: live map and tables, JSON API, out-of-service toggle."""
    endpoint = _endpoint(broker, events_port, history_port)
    if token is not None and not token.strip():
        raise _fail("--token must not be empty", EXIT_USAGE)
    given = token is not None
    secret = token.strip() if token is not None else new_token()
    _setup_logging(logging.WARNING)
    cfg = WebConfig(endpoint, host=host, port=port, token=secret, tiles=tiles)

    def ready(bound: int) -> None:
        url = console_url(host, bound, None if given else secret)
        note = " (token from --token/EV_WEB_TOKEN)" if given else ""
        typer.echo(f"web console ready: {url}{note}", nl=True)

    async def main(stop: asyncio.Event) -> None:
        await serve(cfg, stop, ready)

    try:
        _run(main)
    except OSError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc


def register(app: typer.Typer) -> None:
    """Add ``web`` to ``app``."""
    app.command("web")(web)
