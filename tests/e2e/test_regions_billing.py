"""Two regions billed into one PostgreSQL ledger through JetStream, under kill -9.

Two real brokers (regions ``fsa`` and ``ssa``), each with fake stations and a
bridge; one ``nats-server -js``; one PostgreSQL server; the billing worker as
a durable JetStream consumer. Vehicles charge in both regions while the
worker is killed with SIGKILL at random instants; in the end the ledger equals
both brokers' accounts (``billing reconcile`` with both, exit 0).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from broker.consumers.billing.backends import open_ledger
from broker.consumers.billing.jetstream import JetStreamBilling
from tests.e2e.test_bridge_jetstream import start_bridge
from tests.e2e.test_consumers_billing import FakeStation, charge, cli
from tests.support.jetstream_bills import publish_bills
from tests.support.procs import BrokerPorts, Proc, broker_ports, start, start_broker
from tests.support.raw_clients import wait_for
from tests.support.servers import NatsServer, Postgres, nats_server, need_servers, postgres

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BROKER_OPTS = ("--offline-after", "1.5", "--offline-grace", "3")


@dataclass
class Region:
    name: str
    ports: BrokerPorts
    broker: Proc
    bridge: Proc
    stations: list[FakeStation]


@pytest.fixture
def servers() -> Iterator[tuple[NatsServer, Postgres]]:
    need_servers()
    with nats_server() as ns, postgres() as pg:
        yield ns, pg


@pytest.fixture
# (ignored below) pytest's tmp_path fixture, untyped here like the other fixtures of the file
def regions(servers: tuple[NatsServer, Postgres], tmp_path) -> Iterator[list[Region]]:  # type: ignore[no-untyped-def]
    ns, _ = servers
    out: list[Region] = []
    try:
        for name, lat in (("fsa", -12.27), ("ssa", -12.97)):
            ports = broker_ports()
            broker = start_broker(ports, str(tmp_path / f"{name}.db"), *BROKER_OPTS)
            region = Region(name, ports, broker, broker, [])
            out.append(region)
            region.bridge = start_bridge(ports, ns.url, name)
            region.stations = [FakeStation(ports, f"{name.upper()}{i}", lat) for i in range(2)]
        yield out
    finally:
        for r in out:
            for s in r.stations:
                s.close()
            r.bridge.stop()
            r.broker.stop()


def start_worker(url: str, ledger: str, *extra: str) -> Proc:
    proc = start(["python", "-m", "broker", "billing", "--source", url, "--ledger", ledger, *extra])
    try:
        proc.read_until("billing ready", timeout=30)
    except BaseException:
        proc.stop()
        raise
    return proc


# (ignored below) the reconciliation is plain decoded JSON
def reconcile(ledger: str, regions: list[Region]) -> tuple[int, dict]:  # type: ignore[type-arg]
    brokers = [
        a
        for r in regions
        for a in ("--broker", f"127.0.0.1:{r.ports.history}", *r.ports.cred_args())
    ]
    res = cli("billing", "reconcile", "--ledger", ledger, *brokers, "--format", "json")
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout)


# (ignored below) the reconciliation is plain decoded JSON
def reconcile_until_equal(ledger: str, regions: list[Region], timeout: float = 60) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        rc, result = reconcile(ledger, regions)
        if rc == 0:
            return result
        assert time.monotonic() < deadline, f"ledger never equal to the brokers: {result}"
        time.sleep(0.5)


class Driver:
    """Vehicles charging in both regions on a thread, until stopped."""

    def __init__(self, regions: list[Region]) -> None:
        self.regions = regions
        self.sessions: list[str] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        try:
            while not self._stop.is_set():
                r = self.regions[i % 2]
                # a vehicle may charge in both regions: CAR0 does
                self.sessions.append(charge(r.ports, r.stations[(i // 2) % 2], f"CAR{i % 5}"))
                i += 1
        except BaseException as exc:
            self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self.errors, self.errors


def test_two_regions_bill_once_in_postgresql_under_kill_9_of_the_worker(
    servers: tuple[NatsServer, Postgres], regions: list[Region]
) -> None:
    ns, pg = servers
    ledger = pg.create_database("billing")
    rng = random.Random()
    worker = start_worker(ns.url, ledger)
    driver = Driver(regions)
    try:
        for _ in range(4):
            time.sleep(rng.uniform(0.5, 2.5))
            worker.kill9()
            worker.stop()
            worker = start_worker(ns.url, ledger)
        wait_for(lambda: len(driver.sessions) >= 12, timeout=90, what="12 charging sessions")
    finally:
        driver.stop()
    try:
        result = reconcile_until_equal(ledger, regions)
        assert result["sessions"] == len(driver.sessions) >= 12
        with open_ledger(ledger) as led:
            assert sorted(b.session_id for b in led.bills()) == sorted(driver.sessions)
        assert worker.stop() == 0
    finally:
        worker.stop()


def test_a_batch_committed_but_not_acknowledged_is_not_billed_twice(
    servers: tuple[NatsServer, Postgres], regions: list[Region]
) -> None:
    """The worst instant for a crash: the ledger committed, the acks never sent."""
    ns, pg = servers
    ledger = pg.create_database("crash")
    sessions = [charge(r.ports, r.stations[0], f"EV{i}") for i, r in enumerate(regions * 2)]

    async def commit_without_ack() -> int:
        with open_ledger(ledger) as led:
            worker = JetStreamBilling(ns.url, led)
            from broker.consumers.bridge import jetstream

            nc = await jetstream.connect(ns.url, name="t", reconnect=False)
            try:
                subs = await worker._subscribe(nc.jetstream())
                got = 0
                while got < len(sessions):
                    msgs = await subs[0].fetch(len(sessions), timeout=10)
                    worker.handle(msgs)  # committed ... and then "killed": no ack
                    got += len(msgs)
                return worker.stats.billed
            finally:
                await nc.close()

    assert asyncio.run(commit_without_ack()) == len(sessions)
    worker = start_worker(ns.url, ledger)
    try:
        # the unacknowledged batch comes again (after ack_wait) and is ignored
        result = reconcile_until_equal(ledger, regions)
        assert result["sessions"] == len(sessions)
        with open_ledger(ledger) as led:
            assert sorted(b.session_id for b in led.bills()) == sorted(sessions)
    finally:
        assert worker.stop() == 0


def test_billing_jetstream_cli_errors() -> None:
    for args, needle in [
        (["--source", "http://x"], "invalid NATS URL"),
        (["--source", "nats://127.0.0.1:1", "--regions", "a b"], "invalid region"),
        (["--regions", "a"], "--regions needs --source"),
        (["--source", "nats://127.0.0.1:1", "--ledger", "postgresql://x@127.0.0.1:1/none"],
         "cannot reach ledger"),
    ]:  # fmt: skip
        res = cli("billing", *args, timeout=60)
        assert res.returncode == 2, (args, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr


def test_kill_9_mid_batch_on_a_backlog_bills_each_session_once(
    servers: tuple[NatsServer, Postgres],
) -> None:
    """A backlog of bills in the stream (as bridges leave it after an outage of billing):
    the worker is killed with SIGKILL while it works through it, batch after batch."""
    ns, pg = servers
    ledger = pg.create_database("backlog")
    n = 3000

    def billed() -> int:
        with open_ledger(ledger) as led:
            return len(led.bills())

    asyncio.run(publish_bills(ns.url, "backlog", n, "BL", "V", 13))
    rng = random.Random()
    kills = 0
    worker = start_worker(ns.url, ledger)
    try:
        while billed() < n and kills < 4:
            time.sleep(rng.uniform(0.05, 0.6))
            worker.kill9()
            worker.stop()
            kills += 1
            worker = start_worker(ns.url, ledger)
        wait_for(lambda: billed() == n, timeout=120, what=f"{n} bills")
        with open_ledger(ledger) as led:
            sessions = [b.session_id for b in led.bills()]
        assert sorted(sessions) == sorted(f"BL{i}" for i in range(1, n + 1))
        assert kills >= 1
        assert worker.stop() == 0
    finally:
        worker.stop()


def test_a_postgresql_restart_under_the_worker_loses_no_bill_and_no_worker(
    servers: tuple[NatsServer, Postgres],
) -> None:
    """PostgreSQL stops while bills wait in the stream and starts again: the worker keeps
    running (it used to exit on the broken connection) and bills every session once."""
    ns, pg = servers
    ledger = pg.create_database("restarted")

    def billed() -> list[str]:
        with open_ledger(ledger) as led:
            return sorted(b.session_id for b in led.bills())

    worker = start_worker(ns.url, ledger)
    try:
        asyncio.run(publish_bills(ns.url, "pgr", 50, "PG", "V", 5))
        wait_for(lambda: len(billed()) == 50, timeout=60, what="the first 50 bills")
        pg.stop_server()
        asyncio.run(publish_bills(ns.url, "pgr2", 50, "PH", "V", 5))
        worker.read_until("ledger write failed", timeout=30)  # it noticed, and kept running
        assert worker.popen.poll() is None
        pg.start_server()
        want = sorted([f"PG{i}" for i in range(1, 51)] + [f"PH{i}" for i in range(1, 51)])
        wait_for(lambda: billed() == want, timeout=60, what="every bill after the restart")
        assert worker.stop() == 0
        assert "Traceback" not in worker.drain()
    finally:
        worker.stop()
