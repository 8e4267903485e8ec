"""The station status edge: JSON datagrams over UDP (protocol section 2).

A non-blocking socket registered with ``loop.add_reader`` is drained up to
:data:`DRAIN_BATCH` datagrams per wake-up into one reused buffer, with a large
receive buffer (``SO_RCVBUFFORCE`` when privileged, else ``SO_RCVBUF``) so
bursts wait in the kernel instead of being dropped.

Each datagram is classified and counted (``ok``, ``stale``, ``malformed``,
``oversized``, ``invalid``):

* longer than 8 KiB -> ``oversized``; not JSON -> ``malformed``; JSON that
  does not fit the schema -> ``invalid``;
* within one ``boot_id``, a ``seq`` not above the last one seen -> ``stale``
  (reordered or duplicated); a new ``boot_id`` starts over;
* otherwise ``ok``: handed to the app (the core).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Callable
from typing import Final

from broker.metrics import BrokerMetrics
from common.codec import decode_datagram
from common.errors import EVError
from common.messages import MAX_DATAGRAM_BYTES, StatusDatagram

log = logging.getLogger(__name__)

#: Datagrams read per wake-up before yielding to the loop.
DRAIN_BATCH: Final = 512
#: Linux's SO_RCVBUFFORCE (not exported by every Python build's socket module).
SO_RCVBUFFORCE_LINUX: Final = 33
#: Receive buffer sizes to try, largest first.
RCVBUF_SIZES: Final = (32 << 20, 16 << 20, 8 << 20, 4 << 20)


def _outcome_of(error: EVError) -> str:
    """``malformed`` / ``invalid`` / ``oversized`` from the decoder's error."""
    text = error.message.lower()
    if text.startswith("invalid"):
        return "invalid"
    if "larger than" in text:
        return "oversized"
    return "malformed"


def _grow_rcvbuf(sock: socket.socket) -> None:
    """The largest receive buffer we may have (SO_RCVBUFFORCE when privileged)."""
    force = getattr(
        socket, "SO_RCVBUFFORCE", SO_RCVBUFFORCE_LINUX if sys.platform == "linux" else None
    )
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, RCVBUF_SIZES[0])
            return
        except OSError:  # not privileged: capped by the system's maximum
            pass
    for size in RCVBUF_SIZES:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError:
            continue
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= size:
            return


class StatusServer:
    """UDP ingest of station status datagrams."""

    def __init__(
        self, on_datagram: Callable[[StatusDatagram], None], metrics: BrokerMetrics
    ) -> None:
        self._on_datagram = on_datagram
        self._metrics = metrics
        self._sock: socket.socket | None = None
        self._buf = bytearray(MAX_DATAGRAM_BYTES + 1)
        self._view = memoryview(self._buf)
        # point id -> (boot_id, last seq)
        self._last: dict[str, tuple[str | None, int]] = {}
        self.rcvbuf = 0

    def start(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _grow_rcvbuf(sock)
            self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain)

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _drain(self) -> None:
        sock = self._sock
        if sock is None:
            return
        recv_into = sock.recv_into
        view = self._view
        for _ in range(DRAIN_BATCH):
            try:
                n = recv_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                log.debug("status socket error: %r", exc)
                continue
            self.handle(bytes(view[:n]))

    def handle(self, data: bytes) -> str:
        """Classify, count and (when ok) deliver one datagram; returns its outcome."""
        outcome = self._classify(data)
        self._metrics.datagrams.inc(outcome)
        return outcome

    def _classify(self, data: bytes) -> str:
        if len(data) > MAX_DATAGRAM_BYTES:
            return "oversized"
        try:
            datagram = decode_datagram(data)
        except EVError as exc:
            return _outcome_of(exc)
        except Exception:
            return "malformed"
        if datagram.seq is not None:
            last = self._last.get(datagram.id)
            if last is not None and last[0] == datagram.boot_id and datagram.seq <= last[1]:
                return "stale"
            self._last[datagram.id] = (datagram.boot_id, datagram.seq)
        try:
            self._on_datagram(datagram)
        except Exception:
            log.exception("status datagram from %s failed", datagram.id)
            return "error"
        return "ok"
