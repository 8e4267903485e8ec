"""A backlog of bills in the JetStream stream, as bridges leave it while billing is away."""

from __future__ import annotations

import asyncio
import time

from broker.consumers.bridge import jetstream
from common.codec import encode_event
from common.messages import BusEvent
from tests.unit.test_ledger import completed


async def publish_bills(
    url: str, region: str, count: int, sessions: str, vehicles: str, fleet: int
) -> None:
    """``count`` charging.completed events of ``region`` (seq 1..count) into the stream.

    Event ``i`` bills session ``<sessions><i>`` to vehicle ``<vehicles><i % fleet>``;
    each carries the bridge's message id, as a bridge publishes it.
    """
    nc = await jetstream.connect(url, name=f"bills-{region}", reconnect=False)
    try:
        js = nc.jetstream()
        await jetstream.ensure_stream(js, jetstream.DEFAULT_STREAM)
        acks = []
        for i in range(1, count + 1):
            data = completed(f"{sessions}{i}", f"{vehicles}{i % fleet}")
            ev = BusEvent(i, time.time(), "charging.completed", data)
            acks.append(
                await js.publish_async(
                    jetstream.subject(region, ev.topic),
                    encode_event(ev)[1],
                    headers={jetstream.MSG_ID: jetstream.msg_id(region, i)},
                )
            )
        await asyncio.gather(*acks)
    finally:
        await nc.close()
