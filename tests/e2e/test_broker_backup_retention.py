"""``ev-broker backup`` on a running broker, restored into a new broker; ``--retain-events``.

The backup is taken while a vehicle keeps the broker committing, then a second
broker starts on the copy and must know what the first one had confirmed. With
a retention window of a second or two, history answers ``since`` below the
oldest kept event with ``{"error": "pruned", "first_seq": N}`` and a subscriber
falls back to a snapshot.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import zmq

from broker.consumers.subscriber import Endpoint, Subscriber
from common.messages import BusEvent
from tests.e2e.test_broker_vehicles import online_point, reserve
from tests.e2e.test_broker_zmq import History
from tests.support.procs import ROOT, BrokerPorts, Proc, broker_ports, start_broker
from tests.support.raw_clients import (
    history_request,
    http_get,
    metric,
    send_status,
    vehicle,
    wait_for,
    zmq_ctx,
)

pytestmark = pytest.mark.e2e


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    with zmq_ctx() as ctx:
        yield ctx


def history_since(ctx: zmq.Context[zmq.Socket[bytes]], ports: BrokerPorts, seq: int) -> Any:
    h = History(ctx, ports)
    try:
        return h.ask({"op": "since", "seq": seq, "limit": 1000})
    finally:
        h.close()


def test_backup_of_a_running_broker_restores_into_a_new_broker(
    broker: tuple[Proc, BrokerPorts], tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    _, ports = broker
    online_point(ports)
    with vehicle(ports.vehicle) as v:
        assert reserve(v, "KEEP1")["data"]["code"] == "reserved"
    stop = threading.Event()

    def keep_writing() -> None:  # commits go on while the copy is taken
        n = 0
        while not stop.is_set():
            n += 1
            send_status(ports.status, f"BUSY{n % 50:02d}")

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        copy = tmp_path / "backups" / "broker-copy.db"
        res = cli("backup", str(copy), "--db", str(tmp_path / "broker.db"))
    finally:
        stop.set()
        writer.join(timeout=10)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"backup: {copy}")
    assert not copy.with_name(copy.name + ".partial").exists()
    with sqlite3.connect(copy) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        copied_seq = db.execute("SELECT MAX(seq) FROM events").fetchone()[0]
    assert copied_seq >= 3

    # the same file again is refused; a missing database too
    again = cli("backup", str(copy), "--db", str(tmp_path / "broker.db"))
    assert again.returncode == 2 and "exists" in again.stderr
    missing = cli("backup", str(tmp_path / "x.db"), "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no broker database" in missing.stderr

    # restore: a new broker on the copy knows the reservation and the event log
    restored_ports = broker_ports()
    restored = start_broker(restored_ports, str(copy))
    try:
        # (read through the history socket: a new vehicle connection may not read an
        # unregistered id's reservation)
        queue = history_request(restored_ports, {"op": "snapshot"})["queues"]["CP01"]
        assert [r["vehicle_id"] for r in queue] == ["KEEP1"]
        reply = history_since(zctx, restored_ports, 0)
        seqs = [e["seq"] for e in reply["events"]]
        assert seqs[:copied_seq] == list(range(1, copied_seq + 1))
        assert reply["last_seq"] > copied_seq  # broker.started follows the restored log
    finally:
        restored.stop()


class Recorder:
    """A subscriber sink that keeps what it is given."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, Any]] = []
        self.events: list[BusEvent] = []

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.snapshots.append(snapshot)

    def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        self.events.extend(events)


def consumer_endpoint(ports: BrokerPorts) -> Endpoint:
    """The test broker's bus and history, shown the consumer credential it issued."""
    assert ports.creds is not None
    credential = ports.creds.load(ports.creds.consumer)
    return Endpoint("127.0.0.1", ports.events, ports.history, credential)


async def follow(ports: BrokerPorts, sink: Recorder, until: Any, **kwargs: Any) -> Subscriber:
    sub = Subscriber(consumer_endpoint(ports), sink, request_timeout_s=5, **kwargs)
    task = asyncio.create_task(sub.run())
    try:
        async with asyncio.timeout(30):
            while not until(sub):
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return sub


def test_retention_prunes_history_and_subscribers_fall_back_to_a_snapshot(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    ports = broker_ports()
    # about 1.7 s of events kept
    proc = start_broker(ports, str(tmp_path / "b.db"), "--retain-events", "0.00002")
    try:
        online_point(ports, "RET01")

        def pruned() -> bool:
            send_status(ports.status, "RET01")  # keep events coming
            reply = history_since(zctx, ports, 0)
            return reply.get("error") == "pruned"

        wait_for(pruned, timeout=30, what="history pruned", interval=0.3)
        reply = history_since(zctx, ports, 0)
        assert set(reply) == {"error", "first_seq"} and reply["first_seq"] > 1
        first = reply["first_seq"]
        kept = history_since(zctx, ports, first - 1)
        assert kept["events"] and kept["events"][0]["seq"] == first

        # a consumer that follows events (billing, tail) from seq 0: snapshot, then on
        sink = Recorder()
        with vehicle(ports.vehicle) as v:
            sub = asyncio.run(
                follow(ports, sink, lambda s: s.ready.is_set(), start_seq=0, idle_poll_s=0.2)
            )
            assert sub.stats.pruned >= 1 and sub.stats.lost >= 1
            assert len(sink.snapshots) >= 1
            assert any(p["id"] == "RET01" for p in sink.snapshots[0]["points"])
            assert sink.events and sink.events[0].seq >= first
            assert reserve(v, "RETCAR", "RET01")["data"]["code"] == "reserved"

        # a snapshot consumer (the monitor) whose seq was pruned takes a new snapshot
        async def monitor_catch_up() -> Subscriber:
            sink = Recorder()
            sub = Subscriber(consumer_endpoint(ports), sink, snapshot=True)
            try:
                sub.seq.reset(0)  # it stood before the first event, long pruned since
                await asyncio.wait_for(sub.catch_up(), 30)
            finally:
                sub.close()
            assert sink.snapshots and sink.snapshots[-1]["queues"].get("RET01")
            return sub

        sub = asyncio.run(monitor_catch_up())
        assert sub.stats.pruned == 1 and sub.stats.snapshots == 1
        text = http_get(ports.http, "/metrics")[1]
        assert metric(text, "evcharge_events_pruned_total") >= first - 1
    finally:
        proc.stop()
