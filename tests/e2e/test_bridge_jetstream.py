"""The bridge against a real broker and a real ``nats-server -js``.

Point registrations over UDP make a steady flow of bus events (each new point
id is a ``point.registered`` and more). While it flows the bridge is killed
with SIGKILL at random instants and started again, or NATS is restarted
under it; in the end the stream holds the region's seq 1..N exactly once,
in order, each message with ``Nats-Msg-Id: <region>:<seq>`` and the bus
event as its payload.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator

import nats
import pytest

from broker.consumers.bridge.jetstream import DEFAULT_STREAM, MSG_ID, parse_msg_id, region_filter
from common.codec import decode_event
from tests.support.credentials import curve_client_for
from tests.support.procs import BrokerPorts, Proc, start
from tests.support.raw_clients import send_status, wait_for
from tests.support.servers import NatsServer, nats_server, need_servers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def nats_js() -> Iterator[NatsServer]:
    need_servers()
    with nats_server() as server:
        yield server


class Flow:
    """New points announced over UDP on a thread: a steady stream of bus events."""

    def __init__(self, ports: BrokerPorts, prefix: str, rate: float = 150.0) -> None:
        self.ports, self.prefix, self.rate = ports, prefix, rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1 / self.rate):
            self.sent += 1
            send_status(self.ports.status, f"{self.prefix}{self.sent:05d}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def start_bridge(ports: BrokerPorts, url: str, region: str) -> Proc:
    proc = start(
        [
            "python",
            "-m",
            "broker",
            "bridge",
            "--nats",
            url,
            "--region",
            region,
            "--broker",
            "127.0.0.1",
            "--events-port",
            str(ports.events),
            "--history-port",
            str(ports.history),
            *ports.cred_args(),
        ]
    )
    try:
        proc.read_until("bridge ready", timeout=30)
    except BaseException:
        proc.stop()
        raise
    return proc


def broker_last_seq(ports: BrokerPorts) -> int:
    import zmq

    from common.codec import pack, unpack

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    curve_client_for(sock, ports.history)
    sock.connect(f"tcp://127.0.0.1:{ports.history}")
    try:
        sock.send(pack({"op": "since", "seq": 0, "limit": 1}))
        assert sock.poll(10_000), "history did not answer"
        return int(unpack(sock.recv_multipart()[-1])["last_seq"])
    finally:
        sock.close(linger=0)
        ctx.term()


def region_ids(url: str, region: str, at_least: int, timeout: float = 60) -> list[int]:
    """The region's seqs in stream order (payload checked against the id): read until
    at least ``at_least`` messages came and a fetch then finds nothing more (a fetch
    that times out on a loaded machine does not end the reading early)."""

    async def read() -> list[int]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(region_filter(region), stream=DEFAULT_STREAM)
            seqs: list[int] = []
            deadline = time.monotonic() + timeout
            while True:
                try:
                    msgs = await sub.fetch(1000, timeout=2)
                except (nats.errors.TimeoutError, TimeoutError):
                    if len(seqs) >= at_least or time.monotonic() > deadline:
                        return seqs
                    continue
                for m in msgs:
                    got_region, seq = parse_msg_id(m.headers[MSG_ID])
                    topic = m.subject.split(".", 2)[2]
                    ev = decode_event([topic.encode(), m.data])
                    assert got_region == region and ev.seq == seq
                    seqs.append(seq)
                    await m.ack()
        finally:
            await nc.close()

    return asyncio.run(read())


def stream_last(url: str, region: str) -> int:
    async def last() -> int:
        nc = await nats.connect(url)
        try:
            msg = await nc.jetstream().get_last_msg(DEFAULT_STREAM, region_filter(region))
            return parse_msg_id(msg.headers[MSG_ID])[1]
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await nc.close()

    return asyncio.run(last())


def assert_exactly_once(url: str, region: str, ports: BrokerPorts) -> int:
    n = broker_last_seq(ports)
    wait_for(lambda: stream_last(url, region) >= n, timeout=120, what=f"stream reaches seq {n}")
    seqs = region_ids(url, region, n)  # later events (points going offline) may follow n
    assert len(seqs) >= n and seqs == list(range(1, len(seqs) + 1)), (
        f"{len(seqs)} messages for {n} events, not 1..N once in order"
    )
    return n


def test_bridge_kill_9_at_random_points_keeps_every_event_once_in_order(
    broker: tuple[Proc, BrokerPorts], nats_js: NatsServer
) -> None:
    _, ports = broker
    rng = random.Random()
    bridge = start_bridge(ports, nats_js.url, "fsa")
    flow = Flow(ports, "KP")
    kills = 0
    try:
        for _ in range(4):
            time.sleep(rng.uniform(0.2, 1.5))
            bridge.kill9()
            bridge.stop()  # reaps it and closes its pipe
            kills += 1
            time.sleep(rng.uniform(0.0, 0.5))  # events keep flowing while it is down
            bridge = start_bridge(ports, nats_js.url, "fsa")
        # enough events for the check, however slowly a loaded machine lets them flow
        wait_for(lambda: broker_last_seq(ports) > 200, timeout=60, what="200 events")
    finally:
        flow.stop()
    try:
        n = assert_exactly_once(nats_js.url, "fsa", ports)
        assert n > 200 and kills == 4
        assert bridge.stop() == 0
    finally:
        bridge.stop()


def test_nats_restart_while_the_bridge_runs_loses_nothing(
    broker: tuple[Proc, BrokerPorts], nats_js: NatsServer
) -> None:
    _, ports = broker
    bridge = start_bridge(ports, nats_js.url, "ssa")
    flow = Flow(ports, "NR")
    try:
        wait_for(lambda: stream_last(nats_js.url, "ssa") > 50, timeout=30, what="first events")
        nats_js.restart()
        time.sleep(1.0)
        nats_js.restart()
        time.sleep(1.0)
    finally:
        flow.stop()
    try:
        n = assert_exactly_once(nats_js.url, "ssa", ports)
        assert n > 100
        assert bridge.popen.poll() is None  # rode through both restarts
    finally:
        bridge.stop()


def test_bridge_cli_errors() -> None:
    import subprocess
    import sys

    for args, needle in [
        (["--nats", "nats://127.0.0.1:1", "--region", "a.b"], "invalid region"),
        (["--nats", "http://x", "--region", "a"], "invalid NATS URL"),
        (["--nats", "nats://127.0.0.1:1", "--region", "a", "--stream", "x y"], "stream"),
        (["--region", "a"], "--nats"),
    ]:
        res = subprocess.run(
            [sys.executable, "-m", "broker", "bridge", *args],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert res.returncode == 2, (args, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr


def test_a_foreign_stream_or_message_is_a_clear_error(
    broker: tuple[Proc, BrokerPorts], nats_js: NatsServer
) -> None:
    import subprocess
    import sys

    from nats.js.api import StreamConfig

    _, ports = broker

    async def prepare() -> None:
        nc = await nats.connect(nats_js.url)
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="OTHER", subjects=["other.>"]))
            await js.add_stream(StreamConfig(name=DEFAULT_STREAM, subjects=["evcharge.>"]))
            await js.publish("evcharge.zz.point.status", b"not from a bridge")
        finally:
            await nc.close()

    asyncio.run(prepare())
    bus = ["--broker", "127.0.0.1", "--events-port", str(ports.events),
           "--history-port", str(ports.history)]  # fmt: skip
    for args, needle in [
        (["bridge", "--nats", nats_js.url, "--region", "a", "--stream", "OTHER", *bus],
         "does not take evcharge.>"),
        (["bridge", "--nats", nats_js.url, "--region", "zz", *bus], "not published by a bridge"),
        (["billing", "--source", nats_js.url, "--stream", "OTHER", "--db", ":memory:"],
         "does not take evcharge.>"),
    ]:  # fmt: skip
        res = subprocess.run(
            [sys.executable, "-m", "broker", *args], capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr
