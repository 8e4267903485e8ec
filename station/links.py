"""ZeroMQ links from stations to the broker's ROUTER (thin I/O, no protocol logic).

Three shapes, one interface (:class:`Link`):

* :class:`DealerLink` - one DEALER per station, LINGER 0, with a fresh random
  routing id per socket (:func:`routing_id`). Used by ``ev-station run``.
* :class:`MultiLink` - for a fleet: ONE local ROUTER socket that connects to the
  broker once per station. Before each ``connect`` it sets ``ZMQ_ROUTING_ID`` (the
  identity the broker sees on that connection: a fresh random one) and
  ``ZMQ_CONNECT_ROUTING_ID`` (the local name of that connection: the point id).
  The broker therefore sees what N DEALERs would show it - one peer per
  station - while the fleet process keeps two file descriptors per station less
  and drives every station from one socket: a frame arriving on the connection of
  point P is received locally as ``[P, frame]``, and ``[P, frame]`` goes out on
  P's connection. ``ROUTER_MANDATORY`` reports a connection that is not up yet,
  so the caller retries instead of losing the message. Connections are opened a
  budgeted number at a time by :meth:`MultiLink.pump` (the host keeps a window of
  connections opened but not yet welcomed: 10,000 simultaneous SYNs overflow the
  broker's listen backlog, and the kernel's SYN back-off then strands stations for
  minutes). A send for a station whose connection was not opened yet fails at once,
  without a ZeroMQ call (a refused send costs an exception).
* :class:`SharedLink` - for a gateway (``ev-station ocpp``): ONE DEALER connection
  for every point; the host names the point in each message and the broker names it
  in each of its own (docs/station.md, "Routing"). One descriptor in all.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable
from typing import Final, Protocol

import msgspec
import zmq

from common.credentials import Credential, curve_client
from common.zmq_nowait import recv_nowait, send_nowait

HWM: Final = 10_000


def routing_id(point_id: str) -> bytes:
    """A routing id no one else can guess or hold: the point id and 64 random bits.

    The broker routes by the point a connection said ``hello`` for, never by the
    routing id (docs/station.md, "Routing"), so a routing id only has to be unique:
    a peer that took the point id itself as its routing id cannot keep this station
    out. The point id in front only makes the broker's logs readable.
    """
    label = point_id.encode("utf-8").lstrip(b"\0")[:200]  # at most 255 bytes in all
    return label + b"~" + secrets.token_hex(8).encode()


class Link(Protocol):
    """What the station host needs from its ZeroMQ side."""

    def send(self, point_id: str, frame: bytes) -> bool:
        """Queue ``frame`` on ``point_id``'s connection; False when that is not possible now."""
        ...

    def receive(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` frames that arrived, as (point_id, frame), without blocking."""
        ...

    def reset(self) -> None:
        """Close and re-create the socket(s) (the broker may have restarted)."""
        ...

    @property
    def opened(self) -> int:
        """How many stations' connections have been opened so far."""
        ...

    def pump(self, budget: int) -> bool:
        """Open up to ``budget`` more connections; True while some are still to be opened."""
        ...

    def close(self) -> None: ...


def _base_options(sock: zmq.Socket[bytes]) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.RECONNECT_IVL, 200)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)


def _sent(sock: zmq.Socket[bytes], frames: list[bytes]) -> bool:
    """Whether ``frames`` went out now (never waits): False when the broker's queue is
    full (EAGAIN) or, on a ROUTER, the connection is not there (yet, EHOSTUNREACH)."""
    exc = send_nowait(sock, frames)
    if exc is None:
        return True
    if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
        return False
    raise exc


class DealerLink:
    """One DEALER socket for one station."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        point_id: str,
        credential: Credential | None = None,
    ) -> None:
        self._ctx = ctx
        self._endpoint = endpoint
        self._point_id = point_id
        self._credential = credential
        self._sock = self._open()

    def _open(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        _base_options(sock)
        curve_client(sock, self._credential)
        sock.setsockopt(zmq.ROUTING_ID, routing_id(self._point_id))
        sock.connect(self._endpoint)
        return sock

    def send(self, point_id: str, frame: bytes) -> bool:
        return _sent(self._sock, [frame])

    def receive(self, limit: int) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        while len(out) < limit and (frames := recv_nowait(self._sock)) is not None:
            out.append((self._point_id, frames[-1]))
        return out

    def reset(self) -> None:
        self._sock.close(linger=0)
        self._sock = self._open()

    @property
    def opened(self) -> int:
        return 1

    def pump(self, budget: int) -> bool:
        return False

    def close(self) -> None:
        self._sock.close(linger=0)


class MultiLink:
    """One local ROUTER socket with one connection per station (see module doc)."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        point_ids: Iterable[str],
        credential: Credential | None = None,
    ) -> None:
        self._ctx = ctx
        self._endpoint = endpoint
        self._credential = credential
        self._ids = [p.encode("utf-8") for p in point_ids]
        self._connected = 0  # how many of ``_ids`` have been connected on ``_sock``
        self._opened: set[bytes] = set()
        self._sock = self._open()

    def _open(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.ROUTER)
        _base_options(sock)
        curve_client(sock, self._credential)  # every connection of the fleet: one credential
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._connected = 0
        self._opened = set()
        return sock

    @property
    def opened(self) -> int:
        return self._connected

    def pump(self, budget: int) -> bool:
        sock = self._sock
        end = min(len(self._ids), self._connected + max(0, budget))
        for ident in self._ids[self._connected : end]:
            sock.setsockopt(zmq.ROUTING_ID, routing_id(ident.decode("utf-8")))
            sock.setsockopt(zmq.CONNECT_ROUTING_ID, ident)
            sock.connect(self._endpoint)
            self._opened.add(ident)
        self._connected = end
        return end < len(self._ids)

    def send(self, point_id: str, frame: bytes) -> bool:
        ident = point_id.encode("utf-8")
        if self._connected < len(self._ids) and ident not in self._opened:
            return False
        return _sent(self._sock, [ident, frame])

    def receive(self, limit: int) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        while len(out) < limit and (frames := recv_nowait(self._sock)) is not None:
            if len(frames) >= 2:
                with contextlib.suppress(UnicodeDecodeError):
                    out.append((frames[0].decode("utf-8"), frames[-1]))
        return out

    def reset(self) -> None:
        self._sock.close(linger=0)
        self._sock = self._open()

    def close(self) -> None:
        self._sock.close(linger=0)


class _Named(msgspec.Struct):
    """Only the point a broker message names (docs/station.md, "Routing")."""

    id: str | None = None


_NAMED = msgspec.msgpack.Decoder(_Named)


class SharedLink:
    """ONE DEALER connection for every point of a gateway (docs/station.md, "Routing").

    The host says ``hello`` for each point on it and names the point in every message
    (``shared``); the broker names the point in each of its messages, which
    :meth:`receive` reads to hand the frame to that point. Frames that name no point
    (the broker's heartbeat of the connection) come as ``("", frame)``. One descriptor
    and one TCP connection for 10,000 chargers instead of 10,000 of each.
    """

    shared = True

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        label: str,
        point_count: int,
        credential: Credential | None = None,
    ) -> None:
        self._ctx = ctx
        self._endpoint = endpoint
        self._label = label
        self._count = point_count
        self._credential = credential
        self._sock = self._open()

    def _open(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        _base_options(sock)
        # a gateway's hellos, acks and completions for all its points share the queues
        sock.setsockopt(zmq.SNDHWM, max(HWM, 4 * self._count))
        sock.setsockopt(zmq.RCVHWM, max(HWM, 4 * self._count))
        curve_client(sock, self._credential)
        sock.setsockopt(zmq.ROUTING_ID, routing_id(self._label))
        sock.connect(self._endpoint)
        return sock

    def send(self, point_id: str, frame: bytes) -> bool:
        return _sent(self._sock, [frame])

    def receive(self, limit: int) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        while len(out) < limit and (frames := recv_nowait(self._sock)) is not None:
            frame = frames[-1]
            try:
                named = _NAMED.decode(frame).id or ""
            except (msgspec.DecodeError, msgspec.ValidationError):
                named = ""  # the host counts it as a bad frame of the connection
            out.append((named, frame))
        return out

    def reset(self) -> None:
        self._sock.close(linger=0)
        self._sock = self._open()

    @property
    def opened(self) -> int:
        return self._count  # one connection carries them all

    def pump(self, budget: int) -> bool:
        return False

    def close(self) -> None:
        self._sock.close(linger=0)
