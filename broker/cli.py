"""`ev-broker`: the broker service and the bus consumers (Typer app)."""

from __future__ import annotations

from typing import Annotated, Final

from broker.consumers.bridge.cli import register as register_bridge
from broker.consumers.cli import register as register_consumers
from broker.consumers.ocpi.cli import register as register_ocpi
from broker.consumers.web.cli import register as register_web
from broker.credentials_cli import register as register_credentials
from broker.gateway.cli import register as register_gateway
from broker.serve_cli import register as register_serve
from broker.sites_cli import register as register_sites
from broker.tariffs_cli import register as register_tariffs
from common.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    new_app,
    run,
    version_option,
)

PROG: Final = "ev-broker"
EXIT_CODES: Final = (
    (EXIT_OK, "success or stopped by SIGINT/SIGTERM"),
    (EXIT_FAILED, "failure (cannot bind, bad database; reconcile: ledger differs)"),
    (EXIT_USAGE, "usage or configuration error"),
    (EXIT_UNREACHABLE, "broker unreachable"),
)

app = new_app("evcharge broker and its bus consumers.")


@app.callback()
def main_options(
    version: Annotated[bool, version_option(PROG)] = False,
) -> None:
    """evcharge broker and its bus consumers."""


register_serve(app)
register_gateway(app)
register_consumers(app)
register_credentials(app)
register_bridge(app)
register_web(app)
register_tariffs(app)
register_ocpi(app)
register_sites(app)


def main() -> None:
    run(app, PROG, EXIT_CODES)
