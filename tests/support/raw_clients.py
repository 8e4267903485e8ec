"""Raw wire clients for end-to-end tests against a real broker process.

- :class:`Vehicle`: a raw TCP socket speaking the vehicle JSON protocol (one JSON
  object per request, ``\\n``-terminated reply lines, replies matched by ``id``,
  unsolicited pushes set aside until asked for).
- :class:`FakeStation`: a raw zmq DEALER whose routing id is the point id, plus
  a raw UDP socket for status datagrams. Against a broker with auth on (the
  default) it uses that broker's ``station`` credential (found by port, see
  ``tests.support.credentials``): CURVE on the DEALER, ``EVS1`` signatures on
  its datagrams.
- :func:`send_status` and :func:`keepalive`: unsigned status datagrams without a
  station, as the original points send them (accepted from this machine by the
  test broker's ``legacy-station`` credential).
- :func:`wait_for`: poll a condition until it holds or a timeout passes.
- :func:`http_get` and :func:`metric`: the operators' HTTP endpoint.

Nothing here imports the project's own clients: the bytes on the wire are the
test's business.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import zmq

from common.credentials import Credential, curve_client, sign_datagram
from common.messages import PUSH_TYPES
from tests.support.credentials import for_port

HOST = "127.0.0.1"
LAT, LON = -12.266, -38.966
#: Default wait for one reply, push or station message.
WAIT_S = 5.0

ZmqContext = zmq.Context[zmq.Socket[bytes]]


# --- vehicles ------------------------------------------------------------------------------


class Vehicle:
    """A raw TCP vehicle: writes exact bytes, reads reply lines, keeps pushes aside.

    Two styles of request: :meth:`request` sends a request (with an optional
    ``id``) and returns the next reply that is not a push; :meth:`ask` numbers
    the request, fills in ``id_veiculo`` and returns the reply with that ``id``.
    """

    def __init__(self, port: int, vehicle_id: str | None = None, source: str = "") -> None:
        self.vehicle_id = vehicle_id
        # ``source``: another loopback address (127.0.0.2...) to stand for another client
        self.sock = socket.create_connection(
            (HOST, port), timeout=WAIT_S, source_address=(source, 0) if source else None
        )
        self.buf = b""
        self.next_id = 0
        self.pushes: list[dict[str, Any]] = []

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()

    def send(self, payload: bytes | str | dict[str, Any]) -> None:
        """Write ``payload``: bytes as they are, a str encoded, a dict as one JSON line."""
        if isinstance(payload, dict):
            payload = json.dumps(payload, ensure_ascii=False) + "\n"
        if isinstance(payload, str):
            payload = payload.encode()
        self.sock.sendall(payload)

    def recv(self, timeout: float = WAIT_S) -> dict[str, Any]:
        """The next line from the broker, whatever it is."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.vehicle_id or 'vehicle'}: no line within {timeout}s "
                    f"(buffer {self.buf[:200]!r}; pushes so far {self.pushes})"
                )
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the broker (buffer {self.buf[:200]!r})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def recv_type(self, type_: str, timeout: float = WAIT_S) -> dict[str, Any]:
        """The next message of ``type_`` (pushes set aside earlier count); others are dropped."""
        for i, msg in enumerate(self.pushes):
            if msg["type"] == type_:
                del self.pushes[i]
                return msg
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg["type"] == type_:
                return msg

    def reply(self, timeout: float = WAIT_S) -> dict[str, Any]:
        """The next message that is not a push (pushes are set aside)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg["type"] not in PUSH_TYPES:
                return msg
            self.pushes.append(msg)

    def request(self, type_: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Send ``{"type", "data", **extra}`` as is; the next reply that is not a push."""
        self.send({"type": type_, "data": data, **extra})
        return self.reply()

    def ask(self, type_: str, timeout: float = 2 * WAIT_S, **data: Any) -> dict[str, Any]:
        """A numbered request as this vehicle; the reply with its ``id`` (pushes set aside)."""
        self.next_id += 1
        rid = self.next_id
        body = {"id_veiculo": self.vehicle_id, **data} if self.vehicle_id else data
        self.send({"type": type_, "data": body, "id": rid})
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg.get("id") == rid:
                return msg
            assert "id" not in msg, msg
            self.pushes.append(msg)

    def push(self, type_: str, timeout: float = WAIT_S) -> dict[str, Any]:
        """The first push of ``type_`` (already received or arriving within ``timeout``).

        Other messages read meanwhile are kept in :attr:`pushes`.
        """
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.pushes):
                if msg["type"] == type_:
                    return self.pushes.pop(i)
            self.pushes.append(self.recv(max(0.01, deadline - time.monotonic())))

    def closed_by_peer(self, timeout: float = WAIT_S) -> bool:
        """Whether the broker closes the connection within ``timeout`` (input discarded)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


@contextlib.contextmanager
def vehicle(port: int, vehicle_id: str | None = None) -> Iterator[Vehicle]:
    """A :class:`Vehicle`, closed at the end."""
    v = Vehicle(port, vehicle_id)
    try:
        yield v
    finally:
        v.close()


# --- stations ------------------------------------------------------------------------------


def send_status(port: int, point_id: str, **fields: Any) -> None:
    """One minimal status datagram for ``point_id`` (``fields`` added or overridden)."""
    body = {
        "id": point_id,
        "latitude": LAT + 0.001,
        "longitude": LON,
        "available": True,
        "interval_s": 2.0,
    }
    body.update(fields)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(json.dumps(body).encode(), (HOST, port))


@contextlib.contextmanager
def keepalive(port: int, *point_ids: str, every: float = 0.5) -> Iterator[None]:
    """Send a status datagram for each point every ``every`` seconds (a live station)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            for point_id in point_ids:
                send_status(port, point_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class FakeStation:
    """A station as the wire sees it: a DEALER named after the point and a UDP socket."""

    def __init__(
        self,
        ctx: ZmqContext,
        station_port: int,
        point_id: str,
        *,
        status_port: int | None = None,
        lat: float = LAT,
        lon: float = LON,
        price_kwh: float = 2.0,
        credential: Credential | None = None,
        routing_id: bytes | None = None,
    ) -> None:
        self.point_id = point_id
        self.status_port = status_port
        self.lat, self.lon, self.price_kwh = lat, lon, price_kwh
        if credential is None:
            creds = for_port(station_port)
            credential = creds.load(creds.station) if creds is not None else None
        self.credential = credential
        self.dealer: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        # the first protocol's routing id (the point id) unless told otherwise
        self.dealer.setsockopt(zmq.ROUTING_ID, routing_id or point_id.encode())
        curve_client(self.dealer, credential)
        self.dealer.connect(f"tcp://{HOST}:{station_port}")
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp_seq = 0
        self.heartbeats = 0
        self.received: list[dict[str, Any]] = []

    def close(self) -> None:
        self.dealer.close(linger=0)
        self.udp.close()

    def send(self, message: dict[str, Any]) -> None:
        self.dealer.send(msgpack.packb(message))

    def hello(self, price_kwh: float | None = None) -> None:
        """Send hello (the welcome is left to be read)."""
        self.send(
            {
                "type": "hello",
                "id": self.point_id,
                "latitude": self.lat,
                "longitude": self.lon,
                "potencia_kw": 50.0,
                "preco_kwh": self.price_kwh if price_kwh is None else price_kwh,
                "boot_id": "boot-1",
                "interval_s": 2.0,
            }
        )

    def greet(self, price_kwh: float | None = None) -> dict[str, Any]:
        """Send hello; the welcome, which must be the next message."""
        self.hello(price_kwh)
        return self.expect("welcome")

    def datagram(self, estado: str = "disponivel", **extra: Any) -> None:
        """A full status datagram (numbered, signed with the credential) to the status port."""
        assert self.status_port is not None, "no status port given"
        self.udp_seq += 1
        fields = {
            "id": self.point_id,
            "latitude": self.lat,
            "longitude": self.lon,
            "available": estado == "disponivel",
            "estado": estado,
            "potencia_kw": 50.0,
            "preco_kwh": self.price_kwh,
            "boot_id": "boot-1",
            "seq": self.udp_seq,
            "interval_s": 2.0,
            "ts": time.time(),
            **extra,
        }
        body = json.dumps(fields).encode()
        if self.credential is not None:
            body = sign_datagram(self.credential, body)
        self.udp.sendto(body, (HOST, self.status_port))

    def recv(self, timeout: float = WAIT_S) -> dict[str, Any]:
        """The next message from the broker (heartbeats included, and counted)."""
        if not self.dealer.poll(int(timeout * 1000)):
            raise TimeoutError(f"{self.point_id}: nothing from the broker in {timeout}s")
        frames = self.dealer.recv_multipart()
        assert len(frames) == 1, frames
        msg = msgpack.unpackb(frames[0])
        assert isinstance(msg, dict) and "type" in msg
        if msg["type"] == "heartbeat":
            self.heartbeats += 1
        else:
            self.received.append(msg)
        return msg

    def recv_type(self, type_: str, timeout: float = WAIT_S + 1) -> dict[str, Any]:
        """The next message of ``type_``; any other message is skipped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"station {self.point_id}: no {type_!r} within {timeout}s")
            msg = self.recv(left)
            if msg["type"] == type_:
                return msg

    def expect(self, type_: str, timeout: float = WAIT_S) -> dict[str, Any]:
        """The next non-heartbeat message, which must be of ``type_``."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg["type"] == "heartbeat":
                continue
            assert msg["type"] == type_, msg
            return msg

    def ack(self, command: dict[str, Any]) -> None:
        self.send({"type": "ack", "cmd_id": command["cmd_id"], "ok": True})


@contextlib.contextmanager
def zmq_ctx() -> Iterator[ZmqContext]:
    """A zmq context, destroyed (linger 0) at the end."""
    ctx: ZmqContext = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@contextlib.contextmanager
def station(ctx: ZmqContext, port: int, point_id: str) -> Iterator[FakeStation]:
    """A :class:`FakeStation` on station port ``port`` (hello at LAT + 0.001), closed at the end."""
    s = FakeStation(ctx, port, point_id, lat=LAT + 0.001)
    try:
        yield s
    finally:
        s.close()


# --- polling and HTTP ----------------------------------------------------------------------


def wait_for(
    pred: Callable[[], object],
    timeout: float = WAIT_S,
    what: str = "condition",
    interval: float = 0.05,
) -> None:
    """Poll ``pred`` every ``interval`` seconds until it is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


def http_get(port: int, path: str) -> tuple[int, str]:
    """``GET path`` on the local ``port``: status code and body (error statuses too)."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=WAIT_S) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode()


def metric(text: str, name: str) -> float:
    """The value of the sample ``name`` (with labels, exactly as rendered); 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def history_request(ports: Any, request: dict[str, Any]) -> dict[str, Any]:
    """One request on the history socket with the test consumer credential."""
    from tests.support.credentials import curve_client_for

    with zmq_ctx() as ctx:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        curve_client_for(sock, ports.history, "consumer")
        sock.connect(f"tcp://{HOST}:{ports.history}")
        try:
            sock.send(msgpack.packb(request))
            if not sock.poll(5000):
                raise TimeoutError(f"no reply to {request}")
            reply: dict[str, Any] = msgpack.unpackb(sock.recv())
        finally:
            sock.close(linger=0)
    return reply


def kept_accounts(ports: Any) -> dict[str, Any]:
    """Every account as the broker keeps it: the history socket's ``accounts`` op (a new
    vehicle connection may not read an unregistered id's history)."""
    return dict(history_request(ports, {"op": "accounts"})["accounts"])
