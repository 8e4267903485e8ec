"""The gateway's side of the gateway <-> core protocol (:mod:`broker.gateway.wire`).

Theory of operation
-------------------
One DEALER (routing id: the gateway's id, CURVE with a ``gateway``
credential) to the core's ROUTER. ``IMMEDIATE`` is on and every send is
non-blocking: nothing queues towards a core that is not there.

* Every :data:`~broker.gateway.wire.BEAT_S` a ``Beat`` goes out; the core
  answers with a ``Welcome`` naming its boot. No ``Welcome`` for
  :data:`~broker.gateway.wire.CORE_SILENT_S`: the core is taken for gone.
* A ``Welcome`` from a boot not greeted yet (the first core, or a restarted
  one) is answered with ``Hello`` (every bound connection), then every
  forwarded request still unanswered is sent again: the core answers one
  that was committed before its restart from its committed-reply table, and
  handles one it never saw. A request whose send failed is sent again at the
  next ``Welcome``.
* A request unanswered after ``core_wait`` while the core is gone (or never
  reached it) is answered ``erro unavailable``; the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Final, Protocol

import msgspec
import zmq
import zmq.asyncio

from broker.core.vehicle_auth import ConnAuth
from broker.edges.zmq_sockets import receive_loop
from broker.gateway.replica import Replica
from broker.gateway.wire import (
    BEAT_S,
    CORE_SILENT_S,
    Answer,
    Attach,
    Beat,
    Bound,
    Bye,
    Closed,
    Forward,
    Hello,
    PushTo,
    ToCore,
    Welcome,
    decode_to_gateway,
    encode,
)
from common.credentials import Credential, curve_client
from common.zmq_nowait import send_nowait


class LinkedConnection(Protocol):
    """What the link reads of a vehicle connection of the gateway."""

    conn_id: int
    auth: ConnAuth


class LinkServer(Protocol):
    """What the link needs of the gateway's vehicle server (broker.gateway.server), named
    here so that the link does not import the server that imports it."""

    low_battery: float
    low_battery_rearm: float
    replica: Replica

    def answered(
        self,
        conn_id: int,
        rid: int,
        payload: bytes,
        seq: int,
        bound: Bound | None,
        outcome: str = "ok",
    ) -> None: ...

    def push(self, conn_id: int, payload: bytes) -> None: ...

    def attachments(self) -> list[Attach]: ...

    # the connections are the server's own type (Any: it only passes them back)
    def outstanding(self, held: bool = False) -> Sequence[tuple[Any, int, list[Any]]]: ...

    def unavailable(self, conn: Any, rid: int) -> None: ...


log = logging.getLogger(__name__)

SWEEP_S: Final = 0.1
LINK_HWM: Final = 1_000_000


class CoreLink:
    """The DEALER to the core, core liveness, resends and the ``--core-wait`` deadline."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        url: str,
        gateway_id: str,
        core_wait_s: float,
        credential: Credential | None = None,
    ) -> None:
        self._ctx = ctx
        self.url = url
        self.gateway_id = gateway_id
        self.core_wait_s = core_wait_s
        self._credential = credential
        self._sock: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.server: LinkServer | None = None
        self.boot: str | None = None  # the core greeted last
        self.core_seq = 0
        self.last_welcome = 0.0
        self.on_welcome: list[Any] = []
        #: some request may not have reached the current core (checked by _expire)
        self.unsent = False
        self.stats = {"sent": 0, "send_failed": 0, "resent": 0, "core_restarts": 0}

    @property
    def core_up(self) -> bool:
        return self.boot is not None and time.monotonic() - self.last_welcome < CORE_SILENT_S

    async def start(self, server: LinkServer) -> None:
        self.server = server
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, LINK_HWM)
        sock.setsockopt(zmq.RCVHWM, LINK_HWM)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        sock.setsockopt(zmq.ROUTING_ID, self.gateway_id.encode())
        curve_client(sock, self._credential)
        sock.connect(self.url)
        self._sock = sock
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(receive_loop(sock, self._received, "core link", batch=256)),
            loop.create_task(self._beat_loop(), name="core-link-beat"),
        ]

    async def close(self) -> None:
        self.send(Bye())
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    # --- sending ------------------------------------------------------------------------

    def send(self, message: ToCore) -> bool:
        sock = self._sock
        if sock is None:
            return False
        if send_nowait(sock, [encode(message)]) is None:
            self.stats["sent"] += 1
            return True
        self.stats["send_failed"] += 1
        return False

    def forward(self, conn: LinkedConnection, rid: int, entry: list[Any]) -> None:
        """Send a request (``entry``: slot, request JSON, since, boot it was sent to)."""
        if self.boot is None:
            self.unsent = True
            return  # sent once a core greets this gateway
        fwd = Forward(conn.conn_id, rid, conn.auth.address, conn.auth.default_id, entry[1])
        if self.send(fwd):
            entry[3] = self.boot
        else:
            self.unsent = True

    def closed(self, conn_id: int) -> None:
        self.send(Closed(conn_id))

    # --- receiving ----------------------------------------------------------------------

    def _received(self, frames: list[bytes]) -> None:
        server = self.server
        if server is None or len(frames) != 1:
            return
        try:
            message = decode_to_gateway(frames[0])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("undecodable message from the core: %s", exc)
            return
        try:
            match message:
                case Answer():
                    server.answered(
                        message.conn,
                        message.rid,
                        message.payload,
                        message.seq,
                        message.bound,
                        message.outcome,
                    )
                case PushTo():
                    server.push(message.conn, message.payload)
                case Welcome():
                    self._welcome(message)
        except Exception:
            log.exception("handling %s from the core failed", type(message).__name__)

    def _welcome(self, welcome: Welcome) -> None:
        server = self.server
        assert server is not None
        self.last_welcome = time.monotonic()
        self.core_seq = welcome.seq
        if welcome.boot != self.boot or welcome.greet:
            if self.boot is not None and welcome.boot != self.boot:
                self.stats["core_restarts"] += 1
                log.warning("the core restarted (boot %s): re-attaching", welcome.boot)
            elif self.boot is not None:
                log.warning("the core had dropped this gateway as silent: re-attaching")
            self.boot = welcome.boot
            server.low_battery = welcome.low_battery
            server.low_battery_rearm = welcome.low_battery_rearm
            server.replica.set_capacity(welcome.queue_capacity)
            self.send(Hello(self.gateway_id, server.attachments()))
            resend = server.outstanding()
        else:
            resend = [o for o in server.outstanding() if o[2][3] != self.boot]
        for conn, rid, entry in resend:
            self.stats["resent"] += 1
            self.forward(conn, rid, entry)
        for callback in self.on_welcome:
            callback(welcome)

    # --- timers -------------------------------------------------------------------------

    async def _beat_loop(self) -> None:
        next_beat = 0.0
        while True:
            now = time.monotonic()
            if now >= next_beat:
                self.send(Beat())
                next_beat = now + BEAT_S
            self._expire(now)
            await asyncio.sleep(SWEEP_S)

    def _expire(self, now: float) -> None:
        """Requests held longer than ``core_wait`` without a core to answer them."""
        server = self.server
        if server is None:
            return
        up = self.core_up
        if up and not self.unsent:
            return  # every request reached the core that is there: it answers them
        deadline = now - self.core_wait_s
        unsent = False
        for conn, rid, entry in server.outstanding(held=True):
            if entry[3] != self.boot:
                unsent = True
            if entry[2] < deadline and (not up or entry[3] != self.boot):
                server.unavailable(conn, rid)
        self.unsent = unsent
