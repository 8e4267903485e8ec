"""One live broker against hostile clients, phase after phase (marked ``hostile``).

Phases: Hypothesis-generated request documents (every type, wrong types, extreme
numbers, NaN/Infinity, huge strings, deep nesting, unknown fields, invalid UTF-8),
Hypothesis-generated raw byte streams, floods of tiny objects from clients that
never read, and slow readers of large replies. After each phase the broker still
answers ``ping`` within 100 ms, its RSS stays within a bound, it never answered
``internal``; at the end a kill -9 and a restart keep every reservation and bill
it confirmed before the attack. The whole module is bounded to well under a
minute (Hypothesis example counts are set for that).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from common.messages import MAX_REQUEST_BYTES
from tests.hostile import live
from tests.hostile.inputs import byte_streams, documents
from tests.hostile.live import HERE, POINTS, Ledger, LiveBroker, ping_ms, rss_kib
from tests.support.procs import broker_ports
from tests.support.raw_clients import HOST, FakeStation, keepalive, zmq_ctx

pytestmark = [
    pytest.mark.hostile,
    pytest.mark.e2e,
    # a failing example may be a 70 kB document: let Hypothesis print it
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]

PING_MS = 100.0
RSS_GROWTH_KIB = 150 * 1024
FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)


class Attack:
    def __init__(self, broker: LiveBroker, ledger: Ledger) -> None:
        self.broker = broker
        self.ledger = ledger
        self.rss_start = rss_kib(broker.pid)
        self.internal: list[bytes] = []
        self.sent = 0

    def healthy(self) -> None:
        assert self.broker.alive(), self.broker.log()[-3000:]
        assert ping_ms(self.broker.ports.vehicle) < PING_MS
        growth = rss_kib(self.broker.pid) - self.rss_start
        assert growth < RSS_GROWTH_KIB, f"RSS grew by {growth} KiB"
        assert self.internal == [], self.internal[:5]

    def exchange(self, payload: bytes) -> None:
        """Send ``payload`` and a numbered ping on a fresh connection; wait for the pong
        (or for the broker to close a connection that sent too much)."""
        self.sent += 1
        with socket.create_connection((HOST, self.broker.ports.vehicle), timeout=10) as s:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                s.sendall(payload + b'\n{"type":"ping","data":{},"id":"end"}\n')
            buf = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    return
                if not chunk:  # only a request over 64 KiB closes the connection (its
                    # too_large reply may be lost to the reset of the unread input)
                    too_large = b'"too_large"' in buf or len(payload) > MAX_REQUEST_BYTES
                    assert too_large, f"closed without too_large: {buf[-300:]!r}"
                    return
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    reply = json.loads(line)
                    if reply.get("type") == "erro" and reply["data"]["code"] == "internal":
                        self.internal.append(payload[:300])
                    if reply.get("id") == "end" and reply["type"] == "pong":
                        return


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attack]:
    ports = broker_ports()
    broker = LiveBroker(ports, tmp_path_factory.mktemp("hostile"), "--offline-after", "3")
    broker.start()
    ledger = Ledger()
    try:
        with (
            zmq_ctx() as ctx,
            keepalive(ports.status, *POINTS, every=0.5),
        ):
            station = FakeStation(ctx, ports.station, "HP03", status_port=ports.status)
            try:
                station.greet()
                ledger.create(ports, station)
                yield Attack(broker, ledger)
            finally:
                station.close()
    finally:
        ledger.release()
        broker.stop()


def test_fuzzed_documents(attack: Attack) -> None:
    @FUZZ
    @given(doc=documents())
    def run(doc: bytes) -> None:
        attack.exchange(doc)

    run()
    attack.healthy()


def test_fuzzed_byte_streams(attack: Attack) -> None:
    @FUZZ
    @given(stream=byte_streams)
    def run(stream: bytes) -> None:
        attack.exchange(stream)

    run()
    attack.healthy()


def test_floods_from_clients_that_never_read(attack: Attack) -> None:
    port = attack.broker.ports.vehicle
    with live.clogged_clients(port, 6) as floods:
        payload = b"{}" * (128 * 1024)
        sent = [0] * len(floods)
        worst = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and min(sent) < len(payload):
            for i, s in enumerate(floods):
                with contextlib.suppress(BlockingIOError, ConnectionError):
                    sent[i] += s.send(payload[sent[i] : sent[i] + 65536])
            worst.append(ping_ms(port, tries=1))
        worst.sort()
        assert worst[len(worst) // 2] < PING_MS, worst  # the median while flooded
        attack.healthy()
    attack.healthy()


def test_slow_readers_of_large_replies(attack: Attack) -> None:
    port = attack.broker.ports.vehicle
    request = json.dumps({"type": "consulta", "data": {"localizacao": HERE}}).encode() + b"\n"
    with live.clogged_clients(port, 4) as readers:
        for _ in range(40):
            for s in readers:
                with contextlib.suppress(BlockingIOError, ConnectionError):
                    s.send(request * 50)
            for s in readers:  # a trickle of reading
                with contextlib.suppress(BlockingIOError, ConnectionError):
                    s.recv(512)
        attack.healthy()


def test_kill_9_and_restart_keep_every_confirmation(attack: Attack) -> None:
    attack.healthy()
    attack.ledger.release()  # the owners' connections go with the broker anyway
    attack.broker.kill9_and_restart()
    attack.ledger.verify(attack.broker.ports)
    assert "Traceback" not in attack.broker.log()
    assert ping_ms(attack.broker.ports.vehicle) < PING_MS
