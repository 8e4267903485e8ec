"""The station status edge: JSON datagrams over UDP (protocol section 2).

A non-blocking socket registered with ``loop.add_reader`` is drained up to
:data:`DRAIN_BATCH` datagrams per wake-up into one reused buffer, with a large
receive buffer (``SO_RCVBUFFORCE`` when privileged, else ``SO_RCVBUF``) so
bursts wait in the kernel instead of being dropped.

Each datagram is classified and counted (``ok``, ``stale``, ``malformed``,
``oversized``, ``invalid``):

* longer than 8 KiB -> ``oversized``; not JSON -> ``malformed``; JSON that
  does not fit the schema -> ``invalid``;
* otherwise it is handed to the app, and the core applies it (``ok``) or refuses
  it as out of order: within one ``boot_id``, a ``seq`` not above the last one
  seen -> ``stale`` (reordered or duplicated); a new ``boot_id`` starts over.
  The core keeps that per-point state (:func:`broker.core.stations.handle_datagram`)
  and answers with its ``Rejected`` effect; the edge keeps none.

With ``security`` (the broker's default) a datagram must also be vouched for,
else it is ``rejected`` (and counted in ``evcharge_rejected_total{edge="status"}``):

* signed, ``EVS1 <credential> <hex HMAC-SHA256> <JSON>``: the credential is a
  live ``station`` whose pattern matches ``id``; the MAC matches (constant-time
  compare); ``boot_id``, ``seq`` and ``ts`` are present and ``ts`` is within
  :data:`TS_WINDOW_S` of the broker's clock (checked here: it needs no state);
  and, checked by the core before it applies anything, either ``boot_id`` is the
  point's current boot with a higher ``seq``, or it is a new boot whose ``ts``
  is later than the last accepted datagram's (else ``replayed``);
* unsigned: only for a point covered by a live ``legacy-station`` credential,
  from that credential's source address.

Without ``security`` a signed datagram is taken for the JSON it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import sys
import time
from collections.abc import Callable
from typing import Final

from broker.auth import Security
from broker.core.effects import Rejected
from broker.metrics import BrokerMetrics
from common.codec import decode_datagram
from common.credentials import mac_hex, split_signed
from common.errors import EVError
from common.messages import MAX_DATAGRAM_BYTES, StatusDatagram

log = logging.getLogger(__name__)

#: Datagrams read per wake-up before yielding to the loop.
DRAIN_BATCH: Final = 512
#: Linux's SO_RCVBUFFORCE (not exported by every Python build's socket module).
SO_RCVBUFFORCE_LINUX: Final = 33
#: Receive buffer sizes to try, largest first.
RCVBUF_SIZES: Final = (32 << 20, 16 << 20, 8 << 20, 4 << 20)
#: Room for the ``EVS1 <name> <mac> `` prefix in front of an 8 KiB body.
SIGNATURE_ROOM: Final = 256
#: A signed datagram's ``ts`` must be this close to the broker's clock.
TS_WINDOW_S: Final = 60.0
#: Outcomes counted as rejected input (besides the refusals of security).
UNREADABLE: Final = frozenset({"malformed", "invalid", "oversized"})


def _outcome_of(error: EVError) -> str:
    """``malformed`` / ``invalid`` / ``oversized``: the decoder's error code."""
    return error.code if error.code in UNREADABLE else "malformed"


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
    """UDP ingest of station status datagrams.

    ``on_datagram(datagram, signed_ts)`` hands a datagram to the core: ``signed_ts``
    is its ``ts`` when its signature was checked here (else None); it returns the
    core's ``Rejected`` when the datagram is refused as out of order, else None.
    """

    def __init__(
        self,
        on_datagram: Callable[[StatusDatagram, float | None], Rejected | None],
        metrics: BrokerMetrics,
        security: Security | None = None,
        clock: Callable[[], float] = time.time,
        reject: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._on_datagram = on_datagram
        self._metrics = metrics
        self._security = security
        self._clock = clock
        self._reject_input = reject
        self._sock: socket.socket | None = None
        self._buf = bytearray(MAX_DATAGRAM_BYTES + SIGNATURE_ROOM + 1)
        self._view = memoryview(self._buf)
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
        recv_from = sock.recvfrom_into
        view = self._view
        for _ in range(DRAIN_BATCH):
            try:
                n, addr = recv_from(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                log.debug("status socket error: %r", exc)
                continue
            self.handle(bytes(view[:n]), addr[0] if addr else "")

    def handle(self, data: bytes, source: str = "") -> str:
        """Classify, count and (when ok) deliver one datagram from ``source``; its outcome."""
        outcome = self._classify(data, source)
        self._metrics.datagrams.inc(outcome)
        if outcome in UNREADABLE and self._reject_input is not None:
            self._reject_input("status", outcome, f"{len(data)} bytes from {source}")
        return outcome

    def _reject(self, reason: str, detail: str) -> str:
        assert self._security is not None
        self._security.reject("status", reason, detail)
        return "rejected"

    def _classify(self, data: bytes, source: str) -> str:
        signed = split_signed(data)
        if signed is None and data.startswith(b"EVS1 "):
            if self._security is not None:
                return self._reject("bad_signature", f"unreadable EVS1 prefix from {source}")
            return "malformed"
        body = signed[2] if signed is not None else data
        if len(body) > MAX_DATAGRAM_BYTES:
            return "oversized"
        security = self._security
        if security is not None and signed is not None:
            name, mac, _ = signed
            cred = security.keyring.station(name)
            if cred is None:
                return self._reject("unknown_credential", f"{name!r} from {source}")
            if not hmac.compare_digest(mac_hex(cred.hmac_key, body), mac):
                return self._reject("bad_mac", f"{name!r} from {source}")
        try:
            datagram = decode_datagram(body)
        except EVError as exc:
            return _outcome_of(exc)
        except Exception:
            return "malformed"
        signed_ts: float | None = None
        if security is not None:
            if signed is None:
                if not security.keyring.legacy_covers(datagram.id, source):
                    return self._reject("unsigned", f"{datagram.id!r} from {source}")
            else:
                checked = self._signed_ts(signed[0], datagram)
                if isinstance(checked, str):
                    return self._reject(checked, f"{datagram.id!r} signed by {signed[0]!r}")
                signed_ts = checked
        try:
            refused = self._on_datagram(datagram, signed_ts)
        except Exception:
            log.exception("status datagram from %s failed", datagram.id)
            return "error"
        if refused is None:
            return "ok"
        if signed is None or signed_ts is None:
            return refused.reason  # "stale": counted as an outcome, not as an attack
        return self._reject(refused.reason, f"{datagram.id!r} signed by {signed[0]!r}")

    def _signed_ts(self, name: str, d: StatusDatagram) -> float | str:
        """A signed datagram with a good MAC: its ``ts``, or why it is refused.

        Only the stateless checks live here (the credential covers the point; the
        fields are there; ``ts`` is within the window of this clock): the ordering
        of a point's datagrams (``replayed``) is the core's rule, applied with the
        ``ts`` returned here.
        """
        assert self._security is not None
        cred = self._security.keyring.station(name)
        if cred is None or not cred.covers(d.id):
            return "point_not_covered"
        ts = d.ts
        if d.boot_id is None or d.seq is None or not isinstance(ts, int | float):
            return "missing_boot_seq_ts"
        if not abs(self._clock() - ts) <= TS_WINDOW_S:
            return "ts_out_of_window"
        return float(ts)
