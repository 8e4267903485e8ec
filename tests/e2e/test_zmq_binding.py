"""Every ZeroMQ edge reports an endpoint it cannot bind as a TransportError."""

from __future__ import annotations

import pytest
import zmq
import zmq.asyncio

from broker.edges.bus_pub import BusPublisher
from broker.edges.history import HistoryServer
from broker.edges.stations_zmq import StationsEdge
from common.errors import TransportError
from tests.support.zmq_edges import (
    ANY_PORT,
    FakeLog,
    Recorder,
    run,
    zmq_context,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("endpoint", ["in use", "tcp://127.0.0.1:notaport", "bogus://x"])
def test_every_edge_reports_an_unbindable_endpoint_as_transport_error(endpoint: str) -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            holder = ctx.socket(zmq.PUB)
            holder.setsockopt(zmq.LINGER, 0)
            holder.bind(ANY_PORT)
            taken = holder.getsockopt(zmq.LAST_ENDPOINT)
            assert isinstance(taken, bytes)
            where = taken.decode() if endpoint == "in use" else endpoint
            rec = Recorder()
            log = FakeLog(1)
            edges: list[StationsEdge | BusPublisher | HistoryServer] = [
                StationsEdge(
                    ctx,
                    where,
                    heartbeat_s=1.0,
                    on_message=rec.on_message,
                    on_unroutable=rec.on_unroutable,
                ),
                BusPublisher(ctx, where),
                HistoryServer(
                    ctx,
                    where,
                    events_since=log.events_since,
                    snapshot=log.snapshot,
                    accounts=log.accounts,
                ),
            ]
            for edge in edges:
                with pytest.raises(TransportError, match="cannot bind"):
                    await edge.start()
                await edge.close()  # nothing to close, and no error
            holder.close(linger=0)

    run(body())
