"""`ev-broker`: the broker service and the bus consumers (Typer app)."""

from __future__ import annotations

import typer

from broker.bridge_cli import register as register_bridge
from broker.consumers_cli import register as register_consumers
from broker.credentials_cli import register as register_credentials
from broker.serve_cli import register as register_serve
from broker.web_cli import register as register_web

app = typer.Typer(help="evcharge broker and its bus consumers.", no_args_is_help=True)
register_serve(app)
register_consumers(app)
register_credentials(app)
register_bridge(app)
register_web(app)


def main() -> None:
    app()
