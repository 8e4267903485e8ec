"""The vehicles edge: JSON requests over TCP (protocol section 1).

Theory of operation
-------------------
* One :class:`VehicleConnection` (an asyncio ``Protocol``, not streams) per
  client. Bytes go into a :class:`common.codec.StreamDecoder`, which yields a
  decoded request or a decode failure per object (newline-delimited or back to
  back, split or coalesced).
* Replies on one connection are written in request order, pushes behind the
  replies outstanding: those rules live in the sans-IO
  :class:`broker.edges.reply_order.ReplyOrder`, which returns the bytes to
  write; this module only moves them. A reply produced by the core within the
  request's own call belongs to that request's slot (the app links them); a
  later one (after the station's ack or the ack timeout) fills the slot
  ``ReplyOrder.take_waiting`` chooses.
* Identity and authentication are decided by the sans-IO gate
  (:mod:`broker.core.vehicle_auth`): the edge asks it about every request and
  carries out its verdict (answer an error, answer ``registrar``/``autenticar``,
  or hand the request to the core; bind the connection for pushes). Pushes go
  to the connection bound to the vehicle most recently.
* A read that holds one request while nothing of that connection waits (a
  client with one request in flight, the usual case) is answered in the
  callback that read it and its reply written at once.
* Fairness: at most ``requests_per_turn`` requests of one connection are handled
  per event-loop turn; the rest (decoded or still raw) wait, reading from that
  connection pauses, and the work continues in a later turn, after the other
  connections were served. Raw input is decoded in 256-byte pieces so that a
  flood of tiny invalid objects costs one turn a bounded amount of decoding.
* Backpressure: reading pauses while the transport holds more than
  ``max_unsent_bytes`` of unsent replies (or too many replies are outstanding),
  and resumes after. A connection that stays over the limit without reading for
  ``stalled_close_s`` is closed, as is one without a request for
  ``idle_timeout_s``; past ``max_vehicle_connections`` new connections are closed
  at once. Every such refusal counts in ``evcharge_rejected_total``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

import msgspec

from broker.core.effects import Persist, Push, Reply, RequestId
from broker.core.vehicle_auth import ConnAuth, VehicleAuth
from broker.edges.reply_order import Output, ReplyOrder, Slot
from broker.limits import Limits
from broker.metrics import BrokerMetrics
from common.codec import DecodedRequest, DecodeFailure, StreamDecoder, encode_reply
from common.errors import EVError, InternalError, ProtocolError
from common.messages import VehicleRequest
from common.replies import outcome_code
from common.request_codec import Item

log = logging.getLogger(__name__)

#: Outstanding replies per connection above which reading pauses.
MAX_OUTSTANDING: Final = 256
#: Raw input is handed to the decoder at most this many bytes at a time: a piece of
#: ``{}{}...`` holds 128 objects, about 2 ms of decoding (measured 15 us per object).
DECODE_PIECE: Final = 256
EDGE: Final = "vehicles"


def reply_result(type_: str, data: Any) -> str:
    """``ok`` or the error/refusal code of a reply (for metrics)."""
    return outcome_code(type_, data)


class RequestSink(Protocol):
    """What the edge needs from the app."""

    def vehicle_request(
        self,
        conn: int,
        vehicle_id: str,
        request: VehicleRequest,
        slot: Slot,
        address: str | None = None,
    ) -> None: ...
    def vehicle_record_reply(self, persist: Persist, reply: Reply, slot: Slot) -> None: ...
    def vehicle_connected(self, vehicle_id: str) -> None: ...
    def vehicle_disconnected(self, vehicle_id: str) -> None: ...


class PushTarget(Protocol):
    """What a binding holds: a connection that takes pushes (local, or held by a gateway)."""

    vehicle_id: str | None

    def push(self, payload: bytes) -> None: ...


@dataclass(slots=True)
class _Binding:
    conns: list[PushTarget] = field(default_factory=list)


class VehicleConnection(asyncio.Protocol):
    """One vehicle TCP connection."""

    def __init__(self, server: VehicleServer, conn_id: int) -> None:
        self.server = server
        self.conn_id = conn_id
        self.transport: asyncio.Transport | None = None
        self.decoder = StreamDecoder()
        self.replies = ReplyOrder()
        self.auth = ConnAuth(conn_id, "", "CAR0")
        self.vehicle_id: str | None = None  # the vehicle whose pushes this connection gets
        self.closing = False
        self.last_active = time.monotonic()
        self.inbox = bytearray()  # raw input not decoded yet (fairness)
        # decoded, not handled yet (fairness); a list: an empty deque is 760 bytes a connection
        self.backlog: list[Item] = []
        self._turn_scheduled = False
        self._write_paused = False
        self._read_paused = False
        self._stalled_since: float | None = None
        self._stall_low = 0
        # while a turn runs, the replies it produces are gathered here and written in
        # one system call at its end (a pipelining client gets them in one segment)
        self._gathered: list[bytes] | None = None

    @property
    def default_id(self) -> str:
        return self.auth.default_id

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        if len(server.conns) >= server.limits.max_vehicle_connections:
            server.reject("connection_cap")
            self.closing = True
            self.transport.abort()
            return
        limit = server.limits.max_unsent_bytes
        self.transport.set_write_buffer_limits(limit, limit // 4)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.auth.default_id = f"CAR{peer[1]}"
            self.auth.address = str(peer[0])
        server.conns[self.conn_id] = self
        server.metrics.connections.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        self.replies.clear()
        self.backlog.clear()
        self.inbox = bytearray()
        if self.server.conns.pop(self.conn_id, None) is None:
            return
        self.server.connection_closed(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._stalled_since = time.monotonic()
        self._stall_low = self._unsent()
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._stalled_since = None
        self._schedule_turn()
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.inbox or self.backlog:
            self.inbox += data
        elif len(data) <= DECODE_PIECE:
            if not self._decode(data):
                return
            if len(self.backlog) == 1 and not self._write_paused:
                self._answer_one()
                return
        else:
            self.inbox += data
        self._turn()

    def _answer_one(self) -> None:
        """The common case: one request read and nothing waiting before it.

        Answered right here, its reply written at once (no turn, nothing to gather);
        a connection with more input waiting takes the fair, budgeted :meth:`_turn`.
        """
        item = self.backlog.pop(0)
        if isinstance(item, DecodedRequest):
            self.last_active = time.monotonic()
            self._on_request(item.request)
        else:
            self._on_failure(item)
        if self.closing:
            self.backlog.clear()
            self.inbox = bytearray()
        if self.closing or self.replies or self._read_paused or self.backlog:
            self._update_reading()

    def _decode(self, data: bytes) -> bool:
        """Feed ``data`` to the decoder, keeping its items in the backlog; False on failure."""
        try:
            self.backlog.extend(self.decoder.feed(data))
        except Exception:  # a decoder bug must not kill the broker
            log.exception("vehicle stream decoder failed on connection %d", self.conn_id)
            self.inbox = bytearray()
            self._local_reply(
                "unparsed", msgspec.UNSET, InternalError("decoder failure"), close=True
            )
            return False
        return True

    def _turn(self) -> None:
        """Handle up to ``requests_per_turn`` requests; leave the rest for a later turn.

        The replies the turn produces go out together at its end (one write).
        """
        self._turn_scheduled = False
        self._gathered = []
        try:
            self._handle_some()
        finally:
            gathered, self._gathered = self._gathered, None
            transport = self.transport
            if gathered and transport is not None and not transport.is_closing():
                transport.write(gathered[0] if len(gathered) == 1 else b"".join(gathered))
        if self.closing:
            self.backlog.clear()
            self.inbox = bytearray()
        else:
            self._schedule_turn()
        self._update_reading()

    def _handle_some(self) -> None:
        budget = self.server.limits.requests_per_turn
        backlog = self.backlog
        while budget > 0 and not self.closing and not self._write_paused:
            if backlog:
                budget -= 1
                item = backlog.pop(0)
                if isinstance(item, DecodedRequest):
                    self.last_active = time.monotonic()
                    self._on_request(item.request)
                else:
                    self._on_failure(item)
            elif self.inbox:
                piece = bytes(self.inbox[:DECODE_PIECE])
                del self.inbox[:DECODE_PIECE]
                if not self._decode(piece):
                    return
            else:
                return

    def _schedule_turn(self) -> None:
        """Continue with waiting input in a later loop turn (others are served first)."""
        if (self.backlog or self.inbox) and not self._turn_scheduled and not self._write_paused:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def eof_received(self) -> bool | None:
        # half-close: answer what was received, then close once every reply is written
        if self.backlog or self.inbox:
            budget = self.server.limits.requests_per_turn
            self._eof_drain(budget)
        if not self.replies.close_after_last():
            return None
        self.closing = True
        return True

    def _eof_drain(self, budget: int) -> None:
        """Input that waited for its turn when the client half-closed: decode and handle it.

        The client has stopped sending, so this is bounded by what it already sent.
        """
        while not self.closing and (self.backlog or self.inbox):
            if self.inbox:
                piece = bytes(self.inbox)
                self.inbox = bytearray()
                if not self._decode(piece):
                    return
            while self.backlog and not self.closing:
                item = self.backlog.pop(0)
                if isinstance(item, DecodedRequest):
                    self._on_request(item.request)
                else:
                    self._on_failure(item)

    # --- requests ---------------------------------------------------------------------------

    def _on_failure(self, item: DecodeFailure) -> None:
        close = item.close or item.error.code == "too_large"
        self.server.reject(item.error.code)
        self._local_reply("unparsed", item.request_id, item.error, close=close)

    def _on_request(self, request: VehicleRequest) -> None:
        self.server.handle_request(self, request)

    def answer_here(self, request: VehicleRequest) -> None:
        """The core's own path: the gate, then the core (through the app)."""
        server = self.server
        verdict = server.auth.admit(self.auth, request.type, request.data, time.time())
        if verdict.error is not None:
            server.reject(verdict.error.code)
            self._local_reply(request.type, request.id, verdict.error)
            return
        vehicle_id = verdict.vehicle_id
        if verdict.bind and self.vehicle_id != vehicle_id:
            if self.vehicle_id is not None:
                server.unbind(self.vehicle_id, self)
            server.bind(vehicle_id, self)
        slot = self.replies.open(request.type, request.id, time.perf_counter())
        if verdict.reply is not None:
            rtype, data = verdict.reply
            if verdict.persist is not None:  # a token is confirmed only once it is stored
                reply = Reply(self.conn_id, request.id, rtype, data)
                server.sink.vehicle_record_reply(verdict.persist, reply, slot)
            else:
                self.fill(slot, encode_reply(rtype, data, request.id), rtype, data)
            return
        try:
            self.server.sink.vehicle_request(
                self.conn_id, vehicle_id, request, slot, self.auth.address or None
            )
        except ProtocolError as exc:
            self.fill(slot, encode_reply("erro", exc.to_wire(), request.id), "erro", exc.to_wire())
        except Exception:
            log.exception("request %s from %s failed", request.type, vehicle_id)
            wire = InternalError("internal error").to_wire()
            self.fill(slot, encode_reply("erro", wire, request.id), "erro", wire)

    def local_reply(
        self, request_type: str, request_id: RequestId, error: EVError, *, close: bool = False
    ) -> None:
        """Answer ``error`` in the next slot (the request never reaches the core)."""
        self._local_reply(request_type, request_id, error, close=close)

    def _local_reply(
        self, request_type: str, request_id: RequestId, error: EVError, *, close: bool = False
    ) -> None:
        data = error.to_wire()
        slot = self.replies.open(request_type, request_id, time.perf_counter(), close=close)
        if close:
            self.closing = True
        self.fill(slot, encode_reply("erro", data, request_id), "erro", data)

    # --- output -----------------------------------------------------------------------------

    def fill(self, slot: Slot, payload: bytes, reply_type: str, data: Any) -> None:
        """Give ``slot`` its bytes and write what the order lets out."""
        if slot.payload is not None:
            return
        metrics = self.server.metrics
        result = reply_result(reply_type, data)
        metrics.requests.inc(slot.request_type, result)
        if reply_type == "erro":
            metrics.errors.inc(result)
        metrics.latency.observe(time.perf_counter() - slot.started, slot.request_type)
        self._write(self.replies.fill(slot, payload))

    def push(self, payload: bytes) -> None:
        if self.transport is not None:
            self._write(self.replies.push(payload))

    def _write(self, out: Output) -> None:
        transport = self.transport
        if transport is None:
            return
        gathered = self._gathered
        if gathered is not None:  # inside a turn: written together at its end
            if out.data:
                gathered.append(out.data)
            if not out.close:
                return
            self._gathered = []
            if gathered:
                transport.write(b"".join(gathered))
        if out.data:
            transport.write(out.data)
        if out.close:
            transport.close()
        else:
            self._update_reading()

    def _unsent(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def check_timeouts(self, now: float) -> str | None:
        """``idle`` or ``stalled`` when this connection must be closed at ``now``."""
        limits = self.server.limits
        if self._stalled_since is not None:
            unsent = self._unsent()
            if unsent < self._stall_low:  # the client read something
                self._stall_low = unsent
                self._stalled_since = now
            elif now - self._stalled_since > limits.stalled_close_s:
                return "stalled"
            return None
        if now - self.last_active > limits.idle_timeout_s and not self.replies.waiting_for_core():
            return "idle"
        return None

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want_pause = (
            self._write_paused
            or len(self.replies) > MAX_OUTSTANDING
            or self.closing
            or bool(self.backlog)
            or bool(self.inbox)
        ) and not (self.closing and not self.replies)
        if want_pause and not self._read_paused:
            transport.pause_reading()
            self._read_paused = True
        elif not want_pause and self._read_paused:
            transport.resume_reading()
            self._read_paused = False

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close after writing what is buffered; input still waiting is dropped."""
        self.closing = True
        self.backlog.clear()
        self.inbox = bytearray()
        if self.transport is not None:
            self.transport.close()


class VehicleServer:
    """The TCP server and the vehicle -> connection bindings."""

    def __init__(
        self,
        sink: RequestSink,
        metrics: BrokerMetrics,
        auth: VehicleAuth,
        limits: Limits | None = None,
    ) -> None:
        self.sink = sink
        self.metrics = metrics
        self.auth = auth
        self.limits = limits or Limits()
        self.conns: dict[int, VehicleConnection] = {}
        self.bindings: dict[str, _Binding] = {}
        self._server: asyncio.Server | None = None
        self._next_conn = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def reject(self, reason: str) -> None:
        """Count one refusal of this edge in ``evcharge_rejected_total``."""
        self.metrics.rejected.inc(EDGE, reason)

    @property
    def sweep_interval(self) -> float:
        lim = self.limits
        return max(0.05, min(1.0, lim.idle_timeout_s / 4, lim.stalled_close_s / 4))

    def _sweep(self) -> None:
        """Close idle connections and those stalled over the unsent-bytes limit."""
        now = time.monotonic()
        for conn in list(self.conns.values()):
            reason = conn.check_timeouts(now)
            if reason is not None:
                self.reject(reason)
                log.debug("closing vehicle connection %d: %s", conn.conn_id, reason)
                if reason == "idle":
                    conn.close()
                else:
                    conn.abort()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self.sweep_interval, self._sweep)

    @property
    def vehicles_connected(self) -> int:
        return len(self.bindings)

    def _factory(self) -> VehicleConnection:
        self._next_conn += 1
        return VehicleConnection(self, self._next_conn)

    def handle_request(self, conn: VehicleConnection, request: VehicleRequest) -> None:
        """One decoded request of ``conn`` (a vehicle gateway answers it otherwise)."""
        conn.answer_here(request)

    def connection_closed(self, conn: VehicleConnection) -> None:
        """``conn`` ended: the id it held is free, its vehicle gets no more pushes there."""
        self.auth.closed(conn.auth)
        if conn.vehicle_id is not None:
            self.unbind(conn.vehicle_id, conn)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen on ``host:port``; ``reuse_port``: several processes share the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory, host, port, reuse_address=True, reuse_port=reuse_port, backlog=4096
        )
        self._sweeper = loop.call_later(self.sweep_interval, self._sweep)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns.values()):
            conn.abort()
        self.conns.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # --- bindings --------------------------------------------------------------------------

    def bind(self, vehicle_id: str, conn: PushTarget) -> None:
        conn.vehicle_id = vehicle_id
        binding = self.bindings.get(vehicle_id)
        if binding is None:
            binding = self.bindings[vehicle_id] = _Binding()
            binding.conns.append(conn)
            self.sink.vehicle_connected(vehicle_id)
        else:
            binding.conns.append(conn)

    def unbind(self, vehicle_id: str, conn: PushTarget) -> None:
        binding = self.bindings.get(vehicle_id)
        if binding is None:
            return
        if conn in binding.conns:
            binding.conns.remove(conn)
        if not binding.conns:
            del self.bindings[vehicle_id]
            self.sink.vehicle_disconnected(vehicle_id)

    # --- effects ---------------------------------------------------------------------------

    def deliver_reply(self, reply: Reply, slot: Slot | None) -> None:
        """Write ``reply`` in its place on its connection (dropped if the client left)."""
        conn = self.conns.get(reply.conn)
        if conn is None:
            return
        if slot is None:
            slot = conn.replies.take_waiting(reply.request_id)
            if slot is None:
                log.warning("reply %s on connection %d matches no request", reply.type, reply.conn)
                return
        payload = encode_reply(reply.type, reply.data, reply.request_id, truncated=reply.truncated)
        conn.fill(slot, payload, reply.type, reply.data)

    def deliver_push(self, push: Push) -> bool:
        """Send a push to the vehicle's most recent connection; False when not connected."""
        binding = self.bindings.get(push.vehicle_id)
        if binding is None or not binding.conns:
            return False
        binding.conns[-1].push(encode_reply(push.type, push.data))
        return True
