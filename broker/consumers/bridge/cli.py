"""Command line of the bridge: ``ev-broker bridge --nats URL --region NAME``.

Exit codes: 0 stopped by SIGINT/SIGTERM, 2 usage or configuration error.
Connection failures are not fatal: the bridge retries until stopped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from broker.consumers.bridge import subjects
from broker.consumers.plumbing import (
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
from common.cli import BrokerOpt
from common.errors import ConfigError
from common.ports import EVENTS_PORT, HISTORY_PORT


def bridge(
    nats_url: Annotated[
        str, typer.Option("--nats", envvar="EV_NATS", help="NATS server URL (nats://HOST:PORT).")
    ],
    region: Annotated[
        str, typer.Option("--region", envvar="EV_REGION", help="Region name (subject token).")
    ],
    stream: StreamOpt = subjects.DEFAULT_STREAM,
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas", envvar="EV_REPLICAS", min=1, max=5, help="Stream replicas when created."
        ),
    ] = 1,
    broker: BrokerOpt = "127.0.0.1",
    events_port: EventsPortOpt = EVENTS_PORT,
    history_port: HistoryPortOpt = HISTORY_PORT,
    credentials: CredentialsOpt = None,
) -> None:
    """Publish every bus event of this region to JetStream, exactly once and in order."""
    try:
        subjects.check_nats_url(nats_url)
        subjects.check_region(region)
        subjects.check_stream(stream)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    from broker.consumers.bridge.worker import Bridge, BridgeConfig  # nats-py only when used

    setup_text_logging(logging.INFO)
    endpoint = bus_endpoint(broker, events_port, history_port, credentials)
    log = logging.getLogger("broker.bridge")
    worker = Bridge(BridgeConfig(endpoint, nats_url, region, stream, replicas))

    async def main(stop: asyncio.Event) -> None:
        async def note() -> None:
            await worker.ready.wait()
            typer.echo(
                f"bridge ready: region {region} -> {nats_url} stream {stream} "
                f"after seq {worker.resumed_from}"
            )
            st = worker.stats
            await log_figures(
                log,
                "seq %d published %d duplicates %d restarts %d",
                lambda: (st.last_seq, st.published, st.duplicates, st.restarts),
            )

        task = asyncio.create_task(note())
        try:
            await worker.run(stop)
        except ConfigError as exc:
            raise fail(str(exc), EXIT_USAGE) from exc
        finally:
            task.cancel()

    run_until_signal(main)
    typer.echo(f"bridge stopped at seq {worker.stats.last_seq}")


def register(app: typer.Typer) -> None:
    app.command("bridge")(bridge)
