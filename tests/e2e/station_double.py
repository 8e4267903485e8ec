"""A broker test double for station tests: a real ZeroMQ ROUTER and a real UDP socket."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq


class BrokerDouble:
    """Binds a ROUTER on ``station_port`` and a UDP socket on ``status_port`` (127.0.0.1)."""

    def __init__(self, status_port: int = 0, station_port: int = 0) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router: zmq.Socket[bytes] | None = None
        self.station_port = station_port
        self.bind_router()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", status_port))
        self.status_port = int(self.udp.getsockname()[1])
        self.frames: list[tuple[str, dict[str, Any]]] = []
        # point id -> routing id of the connection that said hello for it (as the broker)
        self.routes: dict[str, bytes] = {}
        self.points_of: dict[bytes, str] = {}

    def bind_router(self) -> None:
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.station_port:
            sock.bind(f"tcp://127.0.0.1:{self.station_port}")
        else:
            self.station_port = sock.bind_to_random_port("tcp://127.0.0.1")
        self.router = sock

    def close_router(self) -> None:
        if self.router is not None:
            self.router.close(linger=0)
            self.router = None

    def close(self) -> None:
        self.close_router()
        self.udp.close()
        self.ctx.term()

    def args(self) -> list[str]:
        return ["--status-port", str(self.status_port), "--station-port", str(self.station_port)]

    def send(self, ident: str, message: dict[str, Any]) -> None:
        """Send to the connection routed for point ``ident`` (the point named in ``id``)."""
        rid = self._route(ident)
        if rid != ident.encode():
            message = {**message, "id": ident}
        self.send_raw(ident, msgpack.packb(message))

    def send_raw(self, ident: str, frame: bytes) -> None:
        assert self.router is not None
        self.router.send_multipart([self._route(ident), frame])

    def _route(self, point_id: str) -> bytes:
        return self.routes.get(point_id, point_id.encode())

    def recv(
        self,
        match: Callable[[str, dict[str, Any]], bool],
        timeout: float = 5.0,
        answer_hello: bool = True,
    ) -> tuple[str, dict[str, Any]]:
        """Frames until one matches (every frame is kept in ``frames``); answers hellos."""
        assert self.router is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.router.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                continue
            ident_b, frame = self.router.recv_multipart()
            msg = msgpack.unpackb(frame)
            if msg.get("type") == "hello":  # the point is named; the routing id is opaque
                self.routes[msg["id"]] = ident_b
                self.points_of[ident_b] = msg["id"]
            ident = msg.get("id") or self.points_of.get(ident_b) or ident_b.decode()
            self.frames.append((ident, msg))
            if answer_hello and msg.get("type") == "hello":
                self.send(ident, {"type": "welcome", "heartbeat_s": 1.0})
            if match(ident, msg):
                return ident, msg
        raise TimeoutError("no matching frame; got " + repr(self.frames[-10:]))

    def recv_type(self, kind: str, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
        return self.recv(lambda _i, m: m.get("type") == kind, timeout)

    def datagram(
        self, match: Callable[[dict[str, Any]], bool] = lambda d: True, timeout: float = 5.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.udp.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.udp.recv(65536)
            except TimeoutError:
                break
            assert len(data) <= 8192
            d: dict[str, Any] = json.loads(data)
            if match(d):
                return d
        raise TimeoutError("no matching datagram")
