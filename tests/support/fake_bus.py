"""A real ZeroMQ bus double (PUB for events, ROUTER for history) for subscriber tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq

from broker.consumers.subscriber import Endpoint
from common.codec import encode_event, pack, unpack
from common.messages import BusEvent


class FakeBus:
    """A broker stand-in: an event log, a PUB socket and a history ROUTER thread."""

    def __init__(self, events_port: int = 0, history_port: int = 0, sndhwm: int = 100_000) -> None:
        self.log: list[BusEvent] = []
        self.snapshot_state: dict[str, Any] = {"points": [], "queues": {}, "sessions": []}
        self.accounts: dict[str, Any] = {}
        self.answer_history = True
        self.requests: list[dict[str, Any]] = []
        self._ctx = zmq.Context()
        self._sndhwm = sndhwm
        self._lock = threading.Lock()
        self.events_port = events_port
        self.history_port = history_port
        self._pub: zmq.Socket[bytes] | None = None
        self._subscriptions = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.start()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.events_port, self.history_port)

    def start(self) -> None:
        pub = self._ctx.socket(zmq.XPUB)  # XPUB: subscriptions can be waited for
        pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber counts, not only new topics
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, self._sndhwm)
        if self.events_port:
            pub.bind(f"tcp://127.0.0.1:{self.events_port}")
        else:
            self.events_port = pub.bind_to_random_port("tcp://127.0.0.1")
        self._pub = pub
        self._subscriptions = 0
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        if self.history_port:
            router.bind(f"tcp://127.0.0.1:{self.history_port}")
        else:
            self.history_port = router.bind_to_random_port("tcp://127.0.0.1")
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, args=(router,), daemon=True)
        self._thread.start()

    def subscribers(self) -> int:
        """Subscriptions received so far (call from the thread that publishes).

        A test waits until this grows instead of sleeping for a SUB to connect.
        """
        pub = self._pub
        while pub is not None:
            try:
                frame = pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frame[:1] == b"\x01":
                self._subscriptions += 1
            elif frame[:1] == b"\x00":
                self._subscriptions -= 1
        return self._subscriptions

    def stop(self) -> None:
        """Close both sockets (a broker going down); the log is kept."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._pub is not None:
            self._pub.close(linger=0)
            self._pub = None

    def close(self) -> None:
        self.stop()
        self._ctx.term()

    def _serve(self, router: zmq.Socket[bytes]) -> None:
        try:
            while not self._stop.is_set():
                if not router.poll(50):
                    continue
                frames = router.recv_multipart()
                request = unpack(frames[-1])
                self.requests.append(request)
                if not self.answer_history:
                    continue
                router.send_multipart([*frames[:-1], pack(self.answer(request))])
        finally:
            router.close(linger=0)

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if request.get("op") == "since":
                after, limit = int(request["seq"]), int(request.get("limit", 1000))
                newer = [e for e in self.log if e.seq > after]
                page = newer[:limit]
                last = self.log[-1].seq if self.log else 0
                events = [
                    {"seq": e.seq, "ts": e.ts, "topic": e.topic, "data": e.data} for e in page
                ]
                return {"events": events, "last_seq": last, "more": len(newer) > limit}
            if request.get("op") == "snapshot":
                return {"seq": self.log[-1].seq if self.log else 0, **self.snapshot_state}
            if request.get("op") == "accounts":
                return {"accounts": self.accounts}
        return {"error": f"unknown op {request.get('op')!r}"}

    def publish(self, topic: str, data: dict[str, Any], *, send: bool = True) -> BusEvent:
        """Append to the log and (unless ``send`` is False: a lost message) publish."""
        with self._lock:
            ev = BusEvent(len(self.log) + 1, time.time(), topic, data)
            self.log.append(ev)
        if send:
            self.resend(ev)
        return ev

    def resend(self, ev: BusEvent) -> None:
        if self._pub is not None:
            self._pub.send_multipart(encode_event(ev))


class Collect:
    """A sink that records what it gets."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.events: list[BusEvent] = []
        self.applied: list[int] = []
        self.snapshots: list[dict[str, Any]] = []
        self.delay_s = delay_s

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.snapshots.append(snapshot)

    def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        if self.delay_s and events:
            time.sleep(self.delay_s)
        self.events.extend(events)
        self.applied.append(applied_seq)

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.events]


def status(i: int) -> dict[str, Any]:
    return {"point_id": f"CP{i % 7}", "estado": "disponivel"}


# --- the pure sequencer ---------------------------------------------------------------
