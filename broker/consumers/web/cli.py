"""Command line of the operator web console: ``ev-broker web``.

Only option parsing and process plumbing live here; the work is done by
:mod:`broker.consumers.web`. The broker options read ``EV_BROKER``, ``EV_EVENTS_PORT``
and ``EV_HISTORY_PORT`` like every consumer; the console's own options read
``EV_WEB_<OPTION>`` (``EV_WEB_HOST``, ``EV_WEB_PORT``, ``EV_WEB_TOKEN``,
``EV_WEB_TILES``), so they never collide with another program's ``EV_PORT``.
SIGINT/SIGTERM stop it with exit code 0.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

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
from common.cli import BrokerOpt
from common.ports import EVENTS_PORT, HISTORY_PORT, WEB_PORT


def web(
    broker: BrokerOpt = "127.0.0.1",
    events_port: EventsPortOpt = EVENTS_PORT,
    history_port: HistoryPortOpt = HISTORY_PORT,
    host: Annotated[
        str, typer.Option("--host", envvar="EV_WEB_HOST", help="Address the console listens on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", envvar="EV_WEB_PORT", min=0, max=65535, help="HTTP port.")
    ] = WEB_PORT,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="EV_WEB_TOKEN",
            help="Access token (random, printed in the URL, when not given or empty).",
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
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-origin",
            envvar="EV_WEB_ALLOWED_ORIGIN",
            help="An origin (scheme://host:port) besides the console's own that may make "
            "state-changing requests (e.g. a reverse proxy's public address); repeatable.",
            show_default=False,
        ),
    ] = None,
    credentials: CredentialsOpt = None,
) -> None:
    """The operator web console: live map and tables, JSON API, out-of-service toggle.

    The out-of-service toggle needs an ``operator`` credential; a ``consumer``
    one shows everything but the broker refuses the toggle.
    """
    # imported here: the web stack takes half a second to import, which every
    # other ev-broker command (tail, billing, serve) would otherwise pay at start
    from broker.consumers.web.auth import new_token
    from broker.consumers.web.server import WebConfig, console_url, serve

    endpoint = bus_endpoint(broker, events_port, history_port, credentials)
    given = bool(token and token.strip())  # an empty EV_WEB_TOKEN means: make one
    secret = token.strip() if token and given else new_token()
    setup_text_logging(logging.INFO)  # the retries while the broker is unreachable
    cfg = WebConfig(
        endpoint,
        host=host,
        port=port,
        token=secret,
        tiles=tiles,
        allowed_origins=tuple(allowed_origin or ()),
    )

    def ready(bound: int) -> None:
        url = console_url(host, bound, None if given else secret)
        note = " (token from --token/EV_WEB_TOKEN)" if given else ""
        typer.echo(f"web console ready: {url}{note}", nl=True)

    async def main(stop: asyncio.Event) -> None:
        await serve(cfg, stop, ready)

    try:
        run_until_signal(main)
    except OSError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc


def register(app: typer.Typer) -> None:
    """Add ``web`` to ``app``."""
    app.command("web")(web)
