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
* ``ROUTER_HANDOVER`` is on: a station that re-creates its socket with the
  same routing id takes over the old connection instead of being refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any, Final

import zmq
import zmq.asyncio

from broker.edges.zmq_sockets import bind_socket, bound_endpoint
from common.codec import decode_station_message, pack
from common.errors import ConfigError, StationProtocolError
from common.messages import MAX_STATION_FRAME, BrokerToStation, Heartbeat, Hello, StationToBroker

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
        sock = bind_socket(
            self._ctx,
            zmq.ROUTER,
            self._endpoint,
            "the stations ROUTER",
            {
                zmq.LINGER: 0,
                zmq.ROUTER_MANDATORY: 1,
                zmq.ROUTER_HANDOVER: 1,
                zmq.MAXMSGSIZE: MAX_STATION_FRAME,
                zmq.SNDHWM: STATION_SNDHWM,
                # A fleet connects thousands of stations at once: the default listen
                # backlog (100) overflows and leaves connections waiting for retries.
                zmq.BACKLOG: STATION_BACKLOG,
            },
        )
        self._sock = sock
        self._tasks = [
            asyncio.create_task(self._recv_loop(sock), name="stations-recv"),
            asyncio.create_task(self._heartbeat_loop(), name="stations-heartbeat"),
        ]
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
        fut: asyncio.Future[Any] = sock.send_multipart(  # type: ignore[assignment]
            [routing_id, frame], flags=zmq.NOBLOCK
        )
        # With NOBLOCK and no queued send the future is already resolved.
        exc = fut.exception() if fut.done() else None
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
        if isinstance(exc, zmq.ZMQError) and exc.errno == errno.EHOSTUNREACH:
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
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    return
                log.error("stations ROUTER receive failed: %r", exc)
                await asyncio.sleep(0.1)
                continue
            self.handle_frames(frames)
            # Take what else is already queued without a future each, then let the rest of
            # the broker run: awaiting a ready recv never yields, so a flood would starve it.
            for _ in range(RECV_BATCH - 1):
                more = _recv_nowait(sock)
                if more is None:
                    break
                self.handle_frames(more)
            await asyncio.sleep(0)

    def handle_frames(self, frames: list[bytes]) -> None:
        """Process one received multipart message ``[routing_id, frame]`` (never raises)."""
        if len(frames) != 2:
            self._malformed(frames[0] if frames else b"", f"{len(frames) - 1} frames, expected 1")
            return
        raw_id, frame = frames
        try:
            point_id = raw_id.decode("utf-8")
        except UnicodeDecodeError:
            self._malformed(raw_id, "routing id is not UTF-8")
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


def _recv_nowait(sock: zmq.asyncio.Socket) -> list[bytes] | None:
    """The next queued multipart message, or None when there is none (never waits)."""
    fut: asyncio.Future[list[bytes]] = sock.recv_multipart(flags=zmq.NOBLOCK)  # type: ignore[assignment]
    if not fut.done() or fut.exception() is not None:
        return None
    return fut.result()
