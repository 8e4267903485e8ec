"""Bus consumer figures: subscriber catch-up and live rates, ledger writes, monitor view.

Over real sockets (the bus double of ``tests.support.fake_bus``) and a
real SQLite file; prints one line per figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console

from broker.consumers.billing.ledger import Ledger
from broker.consumers.billing.worker import BillingSink
from broker.consumers.monitor.view import MonitorView
from broker.consumers.subscriber import Subscriber
from common.events import ChargingCompleted, ChargingStarted, EventData, event_fields
from common.messages import BusEvent
from tests.support.fake_bus import Collect, FakeBus, status

CATCH_UP_EVENTS = 20_000
LIVE_EVENTS = 20_000
POINTS = 10_000


async def _measure_subscriber(bus: FakeBus) -> tuple[float, float, int]:
    sink = Collect()
    sub = Subscriber(bus.endpoint, sink, start_seq=0, idle_poll_s=0.5)
    task = asyncio.create_task(sub.run())
    try:
        t0 = time.perf_counter()
        while len(sink.events) < CATCH_UP_EVENTS:
            await asyncio.sleep(0.001)
        catch_up = CATCH_UP_EVENTS / (time.perf_counter() - t0)
        await asyncio.sleep(0.3)
        refilled_before = sub.stats.refilled
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        publish = loop.run_in_executor(
            None, lambda: [bus.publish("point.status", status(i)) for i in range(LIVE_EVENTS)]
        )
        while len(sink.events) < CATCH_UP_EVENTS + LIVE_EVENTS:
            await asyncio.sleep(0.001)
        await publish
        live = LIVE_EVENTS / (time.perf_counter() - t0)
        return catch_up, live, sub.stats.refilled - refilled_before
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def bench_subscriber() -> None:
    bus = FakeBus()
    try:
        for i in range(CATCH_UP_EVENTS):
            bus.publish("point.status", status(i), send=False)
        catch_up, live, refilled = asyncio.run(_measure_subscriber(bus))
    finally:
        bus.close()
    print(f"subscriber catch-up from history : {catch_up:10,.0f} events/s")
    print(f"subscriber live (publisher-bound): {live:10,.0f} events/s")
    print(f"  of which refilled from history   : {refilled:10,}")


def bench_ledger() -> None:
    with tempfile.TemporaryDirectory() as tmp, Ledger(Path(tmp) / "b.db") as led:
        sink = BillingSink(led)
        n, batch = 5_000, 100
        events = [
            BusEvent(
                i + 1,
                1.0,
                "charging.completed",
                {
                    "session_id": f"S{i}",
                    "vehicle_id": f"CAR{i % 50}",
                    "point_id": "CP1",
                    "started_at": 1.0,
                    "ended_at": 2.0,
                    "energy_kwh": 10.0,
                    "price_kwh": 2.0,
                    "cost": 20.0,
                    "currency": "BRL",
                    "payment_method": "Pix",
                    "reason": "stopped",
                },
            )
            for i in range(n)
        ]
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            sink.on_batch(events[i : i + batch], i + batch)
        batched = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for ev in events[:500]:  # replays: one transaction each, all ignored
            sink.on_batch([ev], n)
        single = 500 / (time.perf_counter() - t0)
    print(f"ledger bills, 100 per transaction: {batched:10,.0f} bills/s")
    print(f"ledger bills, 1 per transaction  : {single:10,.0f} bills/s (replays, ignored)")


def bench_monitor() -> None:
    view = MonitorView(page_size=40)
    points = [{"id": f"CP{i:05d}", "estado": "disponivel"} for i in range(POINTS)]
    t0 = time.perf_counter()
    view.load_snapshot({"seq": 0, "points": points, "queues": {}, "sessions": []})
    load_ms = (time.perf_counter() - t0) * 1000

    def started(i: int, pid: str) -> EventData:
        return ChargingStarted(
            session_id=f"S{i}", vehicle_id=f"CAR{i}", point_id=pid, reservation_id=None,
            started_at="2025-04-07T10:00:00.000Z", price_kwh=2.0, payment_method="Pix",
            nivel_bateria=20.0, nivel_carregar=80.0, capacidade_kwh=60.0,
        )  # fmt: skip

    def completed(i: int, pid: str) -> EventData:
        return ChargingCompleted(
            session_id=f"S{i}", vehicle_id=f"CAR{i}", point_id=pid,
            started_at="2025-04-07T10:00:00.000Z", ended_at="2025-04-07T10:10:00.000Z",
            energy_kwh=10.0, price_kwh=2.0, cost=20.0, payment_method="Pix", reason="stopped",
        )  # fmt: skip

    # complete events, as the broker publishes them
    events = []
    for i in range(50_000):
        data = (started if i % 2 else completed)(i, f"CP{(i * 7919) % POINTS:05d}")
        events.append(BusEvent(i + 1, 1.0, data.TOPIC, event_fields(data)))
    t0 = time.perf_counter()
    view.apply_all(events, 2.0)
    rate = len(events) / (time.perf_counter() - t0)
    console = Console(file=open(os.devnull, "w"), width=140)  # noqa: SIM115
    t0 = time.perf_counter()
    for _ in range(20):
        console.print(view.render(3.0))
    render_ms = (time.perf_counter() - t0) / 20 * 1000
    console.file.close()
    print(f"monitor snapshot of {POINTS:,} points : {load_ms:10.1f} ms")
    print(f"monitor events applied            : {rate:10,.0f} events/s")
    print(f"monitor render of one page        : {render_ms:10.1f} ms")


def main() -> None:
    bench_subscriber()
    bench_ledger()
    bench_monitor()


if __name__ == "__main__":
    main()
