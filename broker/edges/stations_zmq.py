"""The stations edge: a ZeroMQ ROUTER that talks to every station's DEALER.

Each station's DEALER sets its routing id to its point id (UTF-8), so the
routing id *is* the point id. Every message, both ways, is ONE frame holding a
msgpack map with a ``type`` key (``common.messages``: ``Hello``, ``Heartbeat``,
``Ack``, ``SessionComplete`` in; ``Welcome``, ``Heartbeat``, ``Hold``, ...
out).

Theory of operation
-------------------
* A receive task reads ``[routing_id, frame]`` pairs, decodes the frame with
  :func:`common.codec.decode_station_message` and hands valid messages to
  ``on_message(point_id, message)``. Anything else (several frames, a routing
  id that is not UTF-8, bytes that are not msgpack, an unknown ``type``, bad
  fields, a ``hello`` whose ``id`` is not the routing id) is counted in
  ``stats["malformed"]``, logged (rate limited) and dropped. A callback that
  raises is logged; the loop goes on.
* A heartbeat task sends ``{"type": "heartbeat"}`` every ``heartbeat_s`` to
  every station heard from within the live window, so a connected station
  always hears from the broker well within its 5 s reconnect timer. The
  stations are spread over ten slices of the period (by a hash of the id) so
  that a large fleet does not stall the loop in one burst.
* :meth:`StationsEdge.send` never blocks the event loop: it sends with
  ``NOBLOCK`` on a ``ROUTER_MANDATORY`` socket. ``EHOSTUNREACH`` (the station
  is not connected) calls ``on_unroutable(point_id)``; ``EAGAIN`` (the
  station's queue is full, i.e. it stopped reading) drops the message and
  counts it in ``stats["dropped"]``: commands are covered by the core's ack
  timeout and ``session_ack`` by the station's resend of ``session_complete``.
* With ``security`` (the broker's default) the ROUTER is a CURVE server whose
  ZAP handler admits only live ``station`` credentials, and every message is
  checked against the credential its connection authenticated with (the
  ``User-Id`` property): the routing id must match the credential's point
  pattern, and the credential must still be live. Anything else is dropped and
  counted (``evcharge_rejected_total{edge="stations"}``). ``ROUTER_HANDOVER``
  is then off: libzmq cannot tell which credential a new connection belongs to
  before it takes over, so a live routing id is never handed to another peer;
  ZMTP heartbeats drop a dead connection within :data:`PEER_TIMEOUT_MS`, after
  which the station's new connection gets its id.
* Without ``security`` (``--insecure``) ``ROUTER_HANDOVER`` is on: a station
  that re-creates its socket with the same routing id takes over the old
  connection instead of being refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
import zlib
from collections.abc import Callable
from typing import Final

import zmq
import zmq.asyncio

from broker.auth import STATIONS_DOMAIN, Security
from broker.edges.zmq_sockets import (
    bind_socket,
    bound_endpoint,
    count_handshake_failures,
    receive_loop,
    user_id_of,
)
from common.codec import decode_station_message, pack
from common.errors import ConfigError, StationProtocolError
from common.messages import MAX_STATION_FRAME, BrokerToStation, Heartbeat, Hello, StationToBroker
from common.zmq_nowait import send_nowait

log = logging.getLogger(__name__)

#: Messages queued per station before sends to it fail with EAGAIN.
STATION_SNDHWM: Final = 1000
STATION_BACKLOG: Final = 4096
#: A station heard within this many heartbeat periods still gets heartbeats ...
LIVE_WINDOW_PERIODS: Final = 3.0
#: ... and never fewer seconds than this (stations that only send UDP while charging).
MIN_LIVE_WINDOW_S: Final = 10.0
#: Heartbeats of one period go out in this many evenly spaced slices.
HEARTBEAT_SLICES: Final = 10
#: Messages handled per wake-up of the receive task before it yields to the loop.
RECV_BATCH: Final = 256
#: At most one warning per kind of dropped message per this many seconds.
LOG_EVERY_S: Final = 5.0

HEARTBEAT_FRAME: Final = pack(Heartbeat())
#: ZMTP heartbeats on secured connections: a peer silent this long is dropped.
PEER_HEARTBEAT_MS: Final = 1000
PEER_TIMEOUT_MS: Final = 4000


class StationsEdge:
    """ROUTER socket for station commands (protocol section 3)."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        *,
        heartbeat_s: float,
        on_message: Callable[[str, StationToBroker], None],
        on_unroutable: Callable[[str], None],
        live_window_s: float | None = None,
        security: Security | None = None,
        reject: Callable[[str, str, str], None] | None = None,
    ) -> None:
        if not heartbeat_s > 0:
            raise ConfigError(f"heartbeat_s must be positive, not {heartbeat_s!r}")
        self._ctx = ctx
        self._endpoint = endpoint
        self._heartbeat_s = heartbeat_s
        self._live_window_s = (
            live_window_s
            if live_window_s is not None
            else max(LIVE_WINDOW_PERIODS * heartbeat_s, MIN_LIVE_WINDOW_S)
        )
        self._on_message = on_message
        self._on_unroutable = on_unroutable
        self._security = security
        self._reject = reject
        self._sock: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # point id -> when last heard (monotonic), spread over buckets by a hash of the id
        self._buckets: list[dict[str, float]] = [{} for _ in range(HEARTBEAT_SLICES)]
        self._malformed_log = LogThrottle(LOG_EVERY_S)
        self._full_log = LogThrottle(LOG_EVERY_S)
        self.stats: dict[str, int] = {
            "received": 0,
            "sent": 0,
            "malformed": 0,
            "unroutable": 0,
            "dropped": 0,
            "rejected": 0,
        }

    @property
    def endpoint(self) -> str:
        """The bound endpoint (with the real port when bound to port 0 / a wildcard)."""
        return bound_endpoint(self._sock, self._endpoint)

    @property
    def live_stations(self) -> list[str]:
        """Point ids heard within the live window (the ones that get heartbeats)."""
        now = time.monotonic()
        window = self._live_window_s
        return sorted(p for b in self._buckets for p, t in b.items() if now - t <= window)

    async def start(self) -> None:
        """Bind the ROUTER and start the receive and heartbeat tasks.

        Raises TransportError when the endpoint cannot be bound (in use, malformed).
        """
        if self._sock is not None:
            raise RuntimeError("StationsEdge already started")
        options: dict[int, int | bytes] = {
            zmq.LINGER: 0,
            zmq.ROUTER_MANDATORY: 1,
            zmq.ROUTER_HANDOVER: 0 if self._security is not None else 1,
            zmq.MAXMSGSIZE: MAX_STATION_FRAME,
            zmq.SNDHWM: STATION_SNDHWM,
            # A fleet connects thousands of stations at once: the default listen
            # backlog (100) overflows and leaves connections waiting for retries.
            zmq.BACKLOG: STATION_BACKLOG,
        }
        if self._security is not None:
            options.update(self._security.server_options(STATIONS_DOMAIN))
            options[zmq.HEARTBEAT_IVL] = PEER_HEARTBEAT_MS
            options[zmq.HEARTBEAT_TIMEOUT] = PEER_TIMEOUT_MS
        sock = bind_socket(self._ctx, zmq.ROUTER, self._endpoint, "the stations ROUTER", options)
        self._sock = sock
        self._tasks = [
            asyncio.create_task(self._recv_loop(sock), name="stations-recv"),
            asyncio.create_task(self._heartbeat_loop(), name="stations-heartbeat"),
        ]
        if self._security is not None:
            self._tasks.append(
                asyncio.create_task(
                    count_handshake_failures(sock, "stations", self._security.reject),
                    name="stations-handshakes",
                )
            )
        log.info("stations ROUTER bound on %s", self.endpoint)

    async def close(self) -> None:
        """Stop the tasks and close the socket (LINGER 0). Safe to call twice."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    # --- sending ------------------------------------------------------------------------

    def send(self, point_id: str, message: BrokerToStation) -> None:
        """Send one msgpack frame to the station ``point_id``; never blocks.

        Not connected (EHOSTUNREACH) -> ``on_unroutable(point_id)``; queue full
        (EAGAIN) -> dropped and counted.
        """
        self._send_frame(point_id, pack(message))

    def _send_frame(self, point_id: str, frame: bytes) -> bool:
        sock = self._sock
        if sock is None:
            log.warning("send to %s before start or after close: dropped", point_id)
            self.stats["dropped"] += 1
            return False
        try:
            routing_id = point_id.encode("utf-8")
        except UnicodeEncodeError:  # no DEALER can have this id
            routing_id = b""
        exc = send_nowait(sock, [routing_id, frame])
        if exc is None:
            self.stats["sent"] += 1
            return True
        if isinstance(exc, zmq.Again):
            self.stats["dropped"] += 1
            count = self._full_log.due()
            if count:
                log.warning(
                    "station %s is not reading (queue full): message dropped "
                    "(%d dropped since last report)",
                    point_id,
                    count,
                )
            return False
        if exc.errno == errno.EHOSTUNREACH:
            self.stats["unroutable"] += 1
            self._bucket(point_id).pop(point_id, None)
            log.info("station %s is not connected: unroutable", point_id)
            self._call_unroutable(point_id)
            return False
        self.stats["dropped"] += 1
        log.error("send to station %s failed: %r", point_id, exc)
        return False

    def _call_unroutable(self, point_id: str) -> None:
        try:
            self._on_unroutable(point_id)
        except Exception:
            log.exception("on_unroutable(%s) failed", point_id)

    # --- receiving ----------------------------------------------------------------------

    async def _recv_loop(self, sock: zmq.asyncio.Socket) -> None:
        if self._security is None:
            await receive_loop(sock, self.handle_frames, "stations ROUTER", batch=RECV_BATCH)
        else:  # frames uncopied, to read the credential of the connection
            await receive_loop(
                sock, self._handle_secured, "stations ROUTER", copy=False, batch=RECV_BATCH
            )

    def _handle_secured(self, received: list[zmq.Frame]) -> None:
        """A message received with ``copy=False``: its frames and the connection's credential."""
        user = user_id_of(received[-1]) if received else None
        self.handle_frames([f.bytes for f in received], user)

    def handle_frames(self, frames: list[bytes], user: str | None = None) -> None:
        """Process one received multipart message ``[routing_id, frame]`` (never raises).

        ``user`` is the name of the credential the sender's connection authenticated
        with (None on an unsecured ROUTER).
        """
        if len(frames) != 2:
            self._malformed(frames[0] if frames else b"", f"{len(frames) - 1} frames, expected 1")
            return
        raw_id, frame = frames
        try:
            point_id = raw_id.decode("utf-8")
        except UnicodeDecodeError:
            self._malformed(raw_id, "routing id is not UTF-8")
            return
        security = self._security
        if security is not None:
            cred = security.keyring.station(user)
            if cred is None:
                self.stats["rejected"] += 1
                security.reject("stations", "credential_revoked", f"{user!r} as {point_id!r}")
                return
            if not cred.covers(point_id):
                self.stats["rejected"] += 1
                security.reject(
                    "stations", "point_not_covered", f"{cred.name!r} spoke as {point_id!r}"
                )
                return
        try:
            message = decode_station_message(frame)
        except StationProtocolError as exc:
            self._malformed(raw_id, exc.message)
            return
        if isinstance(message, Hello) and message.id != point_id:
            self._malformed(raw_id, f"hello id {message.id!r} differs from the routing id")
            return
        self.stats["received"] += 1
        self._bucket(point_id)[point_id] = time.monotonic()
        try:
            self._on_message(point_id, message)
        except Exception:
            log.exception("on_message(%s, %s) failed", point_id, type(message).__name__)

    def _malformed(self, raw_id: bytes, reason: str) -> None:
        self.stats["malformed"] += 1
        if self._reject is not None:  # counted, and logged at most once a second
            self._reject("stations", "invalid", f"from {raw_id[:64]!r}: {reason}")
            return
        count = self._malformed_log.due()
        if count:
            log.warning(
                "dropped malformed station message from %r: %s (%d dropped since last report)",
                raw_id[:64],
                reason,
                count,
            )
        else:
            log.debug("dropped malformed station message from %r: %s", raw_id[:64], reason)

    # --- heartbeats ---------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        # The live stations are spread over HEARTBEAT_SLICES buckets and one bucket is
        # served every heartbeat_s / HEARTBEAT_SLICES, on absolute deadlines (no drift):
        # each station still gets one heartbeat per period, and thousands of stations do
        # not stall the loop in one burst.
        loop = asyncio.get_running_loop()
        step = self._heartbeat_s / HEARTBEAT_SLICES
        due = loop.time()
        index = 0
        while True:
            due += step
            await asyncio.sleep(max(0.0, due - loop.time()))
            if loop.time() - due > self._heartbeat_s:  # the loop was stalled: do not catch up
                due = loop.time()
            self._heartbeat_bucket(index)
            index = (index + 1) % HEARTBEAT_SLICES

    def send_heartbeats(self) -> int:
        """One heartbeat to every live station now; forget the others. Returns how many sent."""
        return sum(self._heartbeat_bucket(i) for i in range(HEARTBEAT_SLICES))

    def _heartbeat_bucket(self, index: int) -> int:
        bucket = self._buckets[index]
        now = time.monotonic()
        sent = 0
        for point_id, heard in list(bucket.items()):
            if now - heard > self._live_window_s:
                del bucket[point_id]
            elif self._send_frame(point_id, HEARTBEAT_FRAME):
                sent += 1
        return sent

    def _bucket(self, point_id: str) -> dict[str, float]:
        return self._buckets[zlib.crc32(point_id.encode("utf-8", "replace")) % HEARTBEAT_SLICES]


class LogThrottle:
    """Lets a repeated warning through at most once per ``every_s`` seconds."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = float("-inf")
        self._count = 0

    def due(self) -> int:
        """Count one occurrence; how many since the last report when one is due now, else 0."""
        self._count += 1
        now = time.monotonic()
        if now - self._last < self.every_s:
            return 0
        count, self._count, self._last = self._count, 0, now
        return count
