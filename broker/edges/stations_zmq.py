"""The stations edge: a ZeroMQ ROUTER that talks to every station's DEALER.

A connection says ``hello`` for a point, and the point's commands go to that
connection only (docs/station.md, "Routing"): the routing id names the
connection, never the point. A message names its point in ``id``, or is about
the one point its connection said hello for, or (the first protocol, routing id
= point id) about its routing id. One connection may carry many points (a
gateway); the broker names the point in every message to a connection whose
routing id is not that point id. Every message, both ways, is ONE frame holding
a msgpack map with a ``type`` key (``common.messages``: ``Hello``,
``Heartbeat``, ``Ack``, ``SessionComplete`` in; ``Welcome``, ``Heartbeat``,
``Hold``, ... out).

Theory of operation
-------------------
* A receive task reads ``[routing_id, frame]`` pairs, decodes the frame with
  :func:`common.codec.decode_station_message` and hands valid messages to
  ``on_message(point_id, message)``. Anything else (several frames, a routing
  message naming no point that its connection cannot name either, bytes that
  are not msgpack, an unknown ``type``, bad fields) is counted in
  ``stats["malformed"]``, logged (rate limited) and dropped. A callback that
  raises is logged; the loop goes on.
* A heartbeat task sends ``{"type": "heartbeat"}`` every ``heartbeat_s`` to
  every routed connection heard from within the live window, so a connected station
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
  ``User-Id`` property): the point must match the credential's point pattern
  (a hello that does not binds no route), and the credential must still be
  live (also when a command is sent). Anything else is dropped and counted
  (``evcharge_rejected_total{edge="stations"}``). ``ROUTER_HANDOVER`` is then
  off: libzmq cannot tell which credential a new connection belongs to before
  it takes over, so a live routing id is never handed to another peer; a peer
  squatting a point id as its routing id gains nothing, as routes are made by
  covered hellos and ``ev-station`` uses random routing ids.
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

import msgspec
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
        # routing id of a bound connection -> when last heard (monotonic), spread over
        # buckets by a hash of the routing id
        self._buckets: list[dict[bytes, float]] = [{} for _ in range(HEARTBEAT_SLICES)]
        # point id -> (routing id, credential name) of the connection that said hello for it
        self._routes: dict[str, tuple[bytes, str | None]] = {}
        # routing id -> the point ids routed to that connection
        self._points_of: dict[bytes, set[str]] = {}
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
        """Point ids of the connections heard within the live window (they get heartbeats)."""
        now = time.monotonic()
        window = self._live_window_s
        return sorted(
            p
            for b in self._buckets
            for rid, t in b.items()
            if now - t <= window
            for p in self._points_of.get(rid, ())
        )

    def route_of(self, point_id: str) -> bytes | None:
        """The routing id of the connection commands for ``point_id`` go to, if any."""
        route = self._routes.get(point_id)
        return route[0] if route is not None else None

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
        """Send one msgpack frame to the connection routed for ``point_id``; never blocks.

        Only a connection that said hello for the point (with a credential covering it,
        when secured) is ever routed; none (or its credential revoked since) ->
        ``on_unroutable(point_id)``; queue full (EAGAIN) -> dropped and counted. A
        connection whose routing id is not the point id gets the point named in ``id``.
        """
        if self._sock is None:
            log.warning("send to %s before start or after close: dropped", point_id)
            self.stats["dropped"] += 1
            return
        route = self._routes.get(point_id)
        if route is None or not self._still_covered(point_id, route[1]):
            if route is not None:
                self._unbind(point_id)
            self._unroutable(point_id)
            return
        rid = route[0]
        named: object = message
        if rid != point_id.encode("utf-8", "replace"):
            named = (
                {**message, "id": point_id}
                if isinstance(message, dict)
                else msgspec.structs.replace(message, id=point_id)
            )
        self._send_frame(rid, pack(named), point_id)

    def _still_covered(self, point_id: str, user: str | None) -> bool:
        security = self._security
        if security is None:
            return True
        cred = security.keyring.station(user)
        return cred is not None and cred.covers(point_id)

    def _send_frame(self, rid: bytes, frame: bytes, about: str) -> bool:
        sock = self._sock
        if sock is None:
            log.warning("send to %s before start or after close: dropped", about)
            self.stats["dropped"] += 1
            return False
        exc = send_nowait(sock, [rid, frame])
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
                    about,
                    count,
                )
            return False
        if exc.errno == errno.EHOSTUNREACH:
            self._bucket(rid).pop(rid, None)
            points = self._points_of.pop(rid, set())
            for point_id in sorted(points):
                self._routes.pop(point_id, None)
            log.info("station connection %r (%s) is not connected", rid[:64], about)
            for point_id in sorted(points):
                self._unroutable(point_id)
            return False
        self.stats["dropped"] += 1
        log.error("send to station %s failed: %r", about, exc)
        return False

    def _unroutable(self, point_id: str) -> None:
        self.stats["unroutable"] += 1
        try:
            self._on_unroutable(point_id)
        except Exception:
            log.exception("on_unroutable(%s) failed", point_id)

    def _bind(self, point_id: str, rid: bytes, user: str | None) -> None:
        old = self._routes.get(point_id)
        if old is not None and old[0] != rid:
            self._unbind(point_id)
        self._routes[point_id] = (rid, user)
        self._points_of.setdefault(rid, set()).add(point_id)

    def _unbind(self, point_id: str) -> None:
        route = self._routes.pop(point_id, None)
        if route is None:
            return
        points = self._points_of.get(route[0])
        if points is not None:
            points.discard(point_id)
            if not points:
                del self._points_of[route[0]]
                self._bucket(route[0]).pop(route[0], None)

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
        with (None on an unsecured ROUTER). The point a message is about is its ``id``
        (a hello's, or the optional one of the others), else the one point its
        connection said hello for, else (the first protocol) the routing id itself.
        """
        if len(frames) != 2:
            self._malformed(frames[0] if frames else b"", f"{len(frames) - 1} frames, expected 1")
            return
        rid, frame = frames
        try:
            message = decode_station_message(frame)
        except StationProtocolError as exc:
            self._malformed(rid, exc.message)
            return
        point_id = self._point_of(rid, message)
        if point_id is None:
            self._malformed(rid, "the message names no point and its connection said no hello")
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
        route = self._routes.get(point_id)
        if isinstance(message, Hello) or (
            route is None and rid == point_id.encode("utf-8", "replace")
        ):
            self._bind(point_id, rid, user)
        # otherwise a covered message from a connection not routed for the point (a
        # station's new connection that has not said hello yet) is heard, not routed
        self.stats["received"] += 1
        if rid in self._points_of:
            self._bucket(rid)[rid] = time.monotonic()
        try:
            self._on_message(point_id, message)
        except Exception:
            log.exception("on_message(%s, %s) failed", point_id, type(message).__name__)

    def _point_of(self, rid: bytes, message: StationToBroker) -> str | None:
        named = message.id
        if isinstance(named, str):
            return named
        points = self._points_of.get(rid)
        if points:
            if len(points) == 1:
                return next(iter(points))
            return None
        try:
            return rid.decode("utf-8")
        except UnicodeDecodeError:
            return None

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
        for rid, heard in list(bucket.items()):
            if now - heard > self._live_window_s:
                del bucket[rid]
            elif self._send_frame(rid, HEARTBEAT_FRAME, repr(rid[:64])):
                sent += 1
        return sent

    def _bucket(self, rid: bytes) -> dict[bytes, float]:
        return self._buckets[zlib.crc32(rid) % HEARTBEAT_SLICES]


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
