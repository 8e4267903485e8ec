"""Regions figures: events through one bridge, bills/s into PostgreSQL and SQLite, delay.

Real servers started here (``nats-server -js``, PostgreSQL with fsync on), in
temp folders, stopped at the end. Side by side in one run:

* the bridge: catch-up from history (a backlog) and live events into JetStream,
  against the plain subscriber over the same bus (the price of the acks);
* bills/s from JetStream into the PostgreSQL ledger and into the SQLite ledger;
* the delay from ``charging.completed`` on the bus to its ledger row (p50/p99),
  through broker -> bridge -> JetStream -> billing -> PostgreSQL, and directly
  broker -> bus billing worker -> SQLite, with real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from broker.consumers.billing.backends import open_ledger
from broker.consumers.billing.jetstream import JetStreamBilling
from broker.consumers.billing.ledger import LedgerBase
from broker.consumers.bridge.worker import Bridge, BridgeConfig
from broker.consumers.subscriber import Subscriber
from tests.support.fake_bus import Collect, FakeBus, status
from tests.support.jetstream_bills import publish_bills
from tests.support.procs import Proc, broker_ports, start, start_broker
from tests.support.servers import nats_server, postgres

EVENTS = 20_000
BILLS = 5_000
TRIPS = 40


# --- bridge ---------------------------------------------------------------------------


async def _until(pred: Any, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("bench condition not reached")
        await asyncio.sleep(0.005)


async def _bridge_rates(bus: FakeBus, url: str) -> tuple[float, float]:
    bridge = Bridge(BridgeConfig(bus.endpoint, url, "bench"))
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        t0 = time.perf_counter()
        await _until(lambda: bridge.stats.last_seq >= EVENTS)
        catch_up = EVENTS / (time.perf_counter() - t0)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        publish = loop.run_in_executor(
            None, lambda: [bus.publish("point.status", status(i)) for i in range(EVENTS)]
        )
        await _until(lambda: bridge.stats.last_seq >= 2 * EVENTS)
        await publish
        live = EVENTS / (time.perf_counter() - t0)
        return catch_up, live
    finally:
        stop.set()
        await task


async def _subscriber_catch_up(bus: FakeBus) -> float:
    sink = Collect()
    sub = Subscriber(bus.endpoint, sink, start_seq=0)
    task = asyncio.create_task(sub.run())
    try:
        t0 = time.perf_counter()
        await _until(lambda: len(sink.events) >= EVENTS)
        return EVENTS / (time.perf_counter() - t0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def bench_bridge(url: str) -> None:
    bus = FakeBus()
    try:
        for i in range(EVENTS):
            bus.publish("point.status", status(i), send=False)
        plain = asyncio.run(_subscriber_catch_up(bus))
        catch_up, live = asyncio.run(_bridge_rates(bus, url))
    finally:
        bus.close()
    print(f"subscriber catch-up (no output)   : {plain:10,.0f} events/s")
    print(f"bridge catch-up into JetStream    : {catch_up:10,.0f} events/s "
          f"({catch_up / plain:.2f} x the plain subscriber)")  # fmt: skip
    print(f"bridge live into JetStream        : {live:10,.0f} events/s (publisher-bound)")


# --- billing --------------------------------------------------------------------------


async def _bill_all(url: str, ledger: LedgerBase, durable: str) -> float:
    worker = JetStreamBilling(url, ledger, durable=durable)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        t0 = time.perf_counter()
        await _until(lambda: worker.stats.billed >= BILLS)
        return BILLS / (time.perf_counter() - t0)
    finally:
        stop.set()
        await task


def bench_billing(url: str, pg_url: str, tmp: Path) -> None:
    asyncio.run(publish_bills(url, "bills", BILLS, "B", "CAR", 97))
    with open_ledger(pg_url) as pg:
        to_pg = asyncio.run(_bill_all(url, pg, "bench-pg"))
    with open_ledger(tmp / "ledger.db") as lite:
        to_sqlite = asyncio.run(_bill_all(url, lite, "bench-sqlite"))
    print(f"bills/s JetStream -> PostgreSQL   : {to_pg:10,.0f} ({BILLS} bills, batches of 256)")
    print(f"bills/s JetStream -> SQLite       : {to_sqlite:10,.0f} "
          f"(PostgreSQL = {to_pg / to_sqlite:.2f} x SQLite)")  # fmt: skip


# --- end-to-end delay -----------------------------------------------------------------


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def bench_delay(url: str, pg_url: str, tmp: Path) -> None:
    from tests.e2e.test_consumers_billing import FakeStation, charge

    ports = broker_ports()
    procs: list[Proc] = []
    procs.append(start_broker(ports, str(tmp / "broker.db")))  # with its credentials
    bus = ["--broker", "127.0.0.1", "--events-port", str(ports.events),
           "--history-port", str(ports.history), *ports.cred_args()]  # fmt: skip
    stations: list[FakeStation] = []
    try:
        for args, ready in (
            (["bridge", "--nats", url, "--region", "delay", *bus], "bridge ready"),
            (["billing", "--source", url, "--ledger", pg_url, "--regions", "delay"],
             "billing ready"),
            (["billing", *bus, "--db", str(tmp / "direct.db")], "billing ready"),
        ):  # fmt: skip
            proc = start(["python", "-m", "broker", *args])
            procs.append(proc)
            proc.read_until(ready, timeout=60)
        stations = [FakeStation(ports, f"DL{i}") for i in range(2)]
        for i in range(TRIPS):
            charge(ports, stations[i % 2], f"CAR{i % 7}")
            time.sleep(0.05)
        for target in (pg_url, str(tmp / "direct.db")):
            with open_ledger(target) as led:
                deadline = time.monotonic() + 60
                while len(led.delays()) < TRIPS and time.monotonic() < deadline:
                    time.sleep(0.2)
    finally:
        for s in stations:
            s.close()
        for p in reversed(procs):
            p.stop()
    with open_ledger(pg_url) as led:
        via = [d * 1000 for d in led.delays()]
    with open_ledger(tmp / "direct.db") as led:
        direct = [d * 1000 for d in led.delays()]
    for label, values in (
        ("bus -> bridge -> JetStream -> PostgreSQL", via),
        ("bus -> billing worker -> SQLite (direct)", direct),
    ):
        print(
            f"delay charging.completed -> row, {label}: p50 {_pct(values, 50):7.1f} ms  "
            f"p99 {_pct(values, 99):7.1f} ms  mean {statistics.fmean(values):7.1f} ms "
            f"({len(values)} sessions)"
        )


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as folder,
        nats_server() as ns,
        postgres(fsync=True) as pg,
    ):
        tmp = Path(folder)
        bench_bridge(ns.url)
        bench_billing(ns.url, pg.create_database("bench"), tmp)
        bench_delay(ns.url, pg.create_database("delay"), tmp)


if __name__ == "__main__":
    main()
