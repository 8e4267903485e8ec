"""A billing worker killed with bills in hand: its restart bills them within seconds.

A worker that fetched a batch from its durable JetStream consumer and died before
acknowledging it (kill -9) leaves those messages pending; JetStream hands them out
again only after the consumer's ack wait. That wait is short (3 s), so the bills
reach the ledger within 5 s of the restart (it was 30 s).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from broker.consumers.billing.backends import open_ledger
from broker.consumers.billing.jetstream import JetStreamBilling
from broker.consumers.bridge import jetstream
from tests.e2e.test_regions_billing import start_worker
from tests.support.jetstream_bills import publish_bills
from tests.support.raw_clients import wait_for
from tests.support.servers import nats_binary, nats_server

pytestmark = pytest.mark.e2e

N = 40


def test_bills_in_hand_of_a_killed_worker_are_billed_within_5_s_of_its_restart(
    tmp_path: Path,
) -> None:
    if nats_binary() is None:
        pytest.skip("nats-server is not installed")
    ledger = str(tmp_path / "ledger.db")
    with nats_server() as ns:
        asyncio.run(publish_bills(ns.url, "kil", N, "KS", "KV", 7))

        async def fetch_and_die() -> int:
            # what a worker killed between fetch and ack leaves: delivered, not acked
            with open_ledger(ledger) as led:
                worker = JetStreamBilling(ns.url, led)
                nc = await jetstream.connect(ns.url, name="doomed", reconnect=False)
                try:
                    subs = await worker._subscribe(nc.jetstream())
                    msgs = await subs[0].fetch(N, timeout=10)
                    return len(msgs)
                finally:
                    await nc.close()  # gone without a single ack

        assert asyncio.run(fetch_and_die()) == N

        def billed() -> int:
            with open_ledger(ledger) as led:
                return len(led.bills())

        assert billed() == 0
        worker = start_worker(ns.url, ledger)
        t0 = time.monotonic()
        try:
            wait_for(lambda: billed() == N, timeout=30, what="the bills in hand", interval=0.1)
            assert time.monotonic() - t0 < 5.0, time.monotonic() - t0
        finally:
            assert worker.stop() == 0
