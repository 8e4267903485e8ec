"""The vehicles edge: JSON requests over TCP (protocol section 1).

Theory of operation
-------------------
* One :class:`VehicleConnection` (an asyncio ``Protocol``, not streams) per
  client. Bytes go into a :class:`common.codec.StreamDecoder`, which yields a
  decoded request or a decode failure per object (newline-delimited or back to
  back, split or coalesced).
* Replies on one connection are written in request order even when an earlier
  request is still waiting (a ``chegada`` waits for the station's ack): each
  request takes a :class:`Slot` at the tail of the connection's queue, the
  answer fills the slot, and filled slots are written from the head.
* A reply produced by the core within the request's own call belongs to that
  request's slot (the app links them). A reply produced later (after the
  station's ack or the ack timeout) fills the oldest *waiting* slot, preferring
  one whose request ``id`` matches.
* Identity: the connection is bound to the first ``id_veiculo`` it names; a
  request naming another vehicle gets ``erro`` ``forbidden``. A request with no
  ``id_veiculo`` acts as the bound vehicle, or ``CAR<client port>`` when the
  connection is not bound yet (which then binds it; ``ping`` never binds).
  Pushes go to the connection bound to the vehicle most recently.
* Backpressure: reading pauses while the transport's write buffer is above its
  high-water mark or too many replies are outstanding, and resumes after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

import msgspec

from broker.core.effects import Push, Reply, RequestId
from broker.metrics import BrokerMetrics
from common.codec import DecodedRequest, DecodeFailure, StreamDecoder, encode_reply
from common.errors import EVError, Forbidden, InternalError, ProtocolError
from common.messages import VehicleRequest

log = logging.getLogger(__name__)

#: Outstanding replies per connection above which reading pauses.
MAX_OUTSTANDING: Final = 256
#: Transport write buffer limits (bytes) for pause/resume of writing.
WRITE_HIGH_WATER: Final = 256 * 1024
WRITE_LOW_WATER: Final = 64 * 1024


def encode_message(type_: str, data: Any, request_id: RequestId = msgspec.UNSET) -> bytes:
    """One compact JSON line ``{"type", "data"[, "id"]}\\n`` (UTF-8, unescaped)."""
    return encode_reply(type_, data, request_id)


def reply_result(type_: str, data: Any) -> str:
    """``ok`` or the error/refusal code of a reply (for metrics)."""
    if type_ == "erro" and isinstance(data, dict):
        return str(data.get("code", "internal"))
    if isinstance(data, dict) and data.get("status") == "error":
        return str(data.get("code", "error"))
    return "ok"


class RequestSink(Protocol):
    """What the edge needs from the app."""

    def vehicle_request(
        self, conn: int, vehicle_id: str, request: VehicleRequest, slot: Slot
    ) -> None: ...
    def vehicle_connected(self, vehicle_id: str) -> None: ...
    def vehicle_disconnected(self, vehicle_id: str) -> None: ...


@dataclass(slots=True)
class Slot:
    """The place of one reply in a connection's output order."""

    request_type: str
    request_id: RequestId
    started: float
    payload: bytes | None = None
    waiting: bool = False  # no reply within the request's own core call: a later one fills it
    close_after: bool = False


@dataclass(slots=True)
class _Binding:
    conns: list[VehicleConnection] = field(default_factory=list)


class VehicleConnection(asyncio.Protocol):
    """One vehicle TCP connection."""

    def __init__(self, server: VehicleServer, conn_id: int) -> None:
        self.server = server
        self.conn_id = conn_id
        self.transport: asyncio.Transport | None = None
        self.decoder = StreamDecoder()
        self.slots: deque[Slot] = deque()
        self.vehicle_id: str | None = None
        self.default_id = "CAR0"
        self.closing = False
        self._write_paused = False
        self._read_paused = False

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.default_id = f"CAR{peer[1]}"
        self.server.conns[self.conn_id] = self
        self.server.metrics.connections.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        self.slots.clear()
        self.server.conns.pop(self.conn_id, None)
        if self.vehicle_id is not None:
            self.server.unbind(self.vehicle_id, self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            items = self.decoder.feed(data)
        except Exception:  # a decoder bug must not kill the broker
            log.exception("vehicle stream decoder failed on connection %d", self.conn_id)
            self._local_reply(
                "unparsed", msgspec.UNSET, InternalError("decoder failure"), close=True
            )
            return
        for item in items:
            if self.closing:
                return
            if isinstance(item, DecodedRequest):
                self._on_request(item.request)
            else:
                self._on_failure(item)
        self._update_reading()

    def eof_received(self) -> bool | None:
        # half-close: keep the write side open until every outstanding reply is written
        if not self.slots:
            return None
        self.closing = True
        self.slots[-1].close_after = True
        return True

    # --- requests ---------------------------------------------------------------------------

    def _on_failure(self, item: DecodeFailure) -> None:
        close = item.close or item.error.code == "too_large"
        self._local_reply("unparsed", item.request_id, item.error, close=close)

    def _on_request(self, request: VehicleRequest) -> None:
        named = getattr(request.data, "id_veiculo", None)
        if named is not None:
            if self.vehicle_id is None:
                self.server.bind(named, self)
            elif named != self.vehicle_id:
                err = Forbidden(
                    f"this connection speaks for {self.vehicle_id}, not {named}",
                    field="id_veiculo",
                )
                self._local_reply(request.type, request.id, err)
                return
            vehicle_id = named
        elif self.vehicle_id is not None:
            vehicle_id = self.vehicle_id
        else:
            vehicle_id = self.default_id
            if request.type != "ping":
                self.server.bind(vehicle_id, self)
        slot = Slot(request.type, request.id, time.perf_counter())
        self.slots.append(slot)
        try:
            self.server.sink.vehicle_request(self.conn_id, vehicle_id, request, slot)
        except ProtocolError as exc:
            self.fill(
                slot, encode_message("erro", exc.to_wire(), request.id), "erro", exc.to_wire()
            )
        except Exception:
            log.exception("request %s from %s failed", request.type, vehicle_id)
            wire = InternalError("internal error").to_wire()
            self.fill(slot, encode_message("erro", wire, request.id), "erro", wire)

    def _local_reply(
        self, request_type: str, request_id: RequestId, error: EVError, *, close: bool = False
    ) -> None:
        data = error.to_wire()
        slot = Slot(request_type, request_id, time.perf_counter(), close_after=close)
        self.slots.append(slot)
        if close:
            self.closing = True
        self.fill(slot, encode_message("erro", data, request_id), "erro", data)

    # --- output -----------------------------------------------------------------------------

    def fill(self, slot: Slot, payload: bytes, reply_type: str, data: Any) -> None:
        """Give ``slot`` its bytes and write every filled slot from the head."""
        if slot.payload is not None:
            return
        slot.payload = payload
        metrics = self.server.metrics
        result = reply_result(reply_type, data)
        metrics.requests.inc(slot.request_type, result)
        if reply_type == "erro":
            metrics.errors.inc(result)
        metrics.latency.observe(time.perf_counter() - slot.started, slot.request_type)
        self._flush()

    def take_waiting(self, request_id: RequestId) -> Slot | None:
        """The oldest slot waiting for a later reply (same request id preferred)."""
        first: Slot | None = None
        for slot in self.slots:
            if slot.waiting and slot.payload is None:
                if slot.request_id == request_id and type(slot.request_id) is type(request_id):
                    return slot
                if first is None:
                    first = slot
        return first

    def push(self, payload: bytes) -> None:
        if self.transport is None:
            return
        if self.slots:
            slot = Slot("push", msgspec.UNSET, 0.0, payload=payload)
            self.slots.append(slot)
            self._flush()
        else:
            self.transport.write(payload)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        out: list[bytes] = []
        close = False
        while self.slots and self.slots[0].payload is not None:
            slot = self.slots.popleft()
            assert slot.payload is not None
            out.append(slot.payload)
            if slot.close_after:
                close = True
                break
        if out:
            transport.write(b"".join(out))
        if close:
            self.slots.clear()
            transport.close()
        else:
            self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want_pause = (
            self._write_paused or len(self.slots) > MAX_OUTSTANDING or self.closing
        ) and not (self.closing and not self.slots)
        if want_pause and not self._read_paused:
            transport.pause_reading()
            self._read_paused = True
        elif not want_pause and self._read_paused:
            transport.resume_reading()
            self._read_paused = False

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class VehicleServer:
    """The TCP server and the vehicle -> connection bindings."""

    def __init__(self, sink: RequestSink, metrics: BrokerMetrics) -> None:
        self.sink = sink
        self.metrics = metrics
        self.conns: dict[int, VehicleConnection] = {}
        self.bindings: dict[str, _Binding] = {}
        self._server: asyncio.Server | None = None
        self._next_conn = 0

    @property
    def vehicles_connected(self) -> int:
        return len(self.bindings)

    def _factory(self) -> VehicleConnection:
        self._next_conn += 1
        return VehicleConnection(self, self._next_conn)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory, host, port, reuse_address=True, backlog=4096
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns.values()):
            conn.abort()
        self.conns.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # --- bindings --------------------------------------------------------------------------

    def bind(self, vehicle_id: str, conn: VehicleConnection) -> None:
        conn.vehicle_id = vehicle_id
        binding = self.bindings.get(vehicle_id)
        if binding is None:
            binding = self.bindings[vehicle_id] = _Binding()
            binding.conns.append(conn)
            self.sink.vehicle_connected(vehicle_id)
        else:
            binding.conns.append(conn)

    def unbind(self, vehicle_id: str, conn: VehicleConnection) -> None:
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
            slot = conn.take_waiting(reply.request_id)
            if slot is None:
                log.warning("reply %s on connection %d matches no request", reply.type, reply.conn)
                return
        conn.fill(
            slot, encode_message(reply.type, reply.data, reply.request_id), reply.type, reply.data
        )

    def deliver_push(self, push: Push, on_sent: Callable[[], None] | None = None) -> bool:
        """Send a push to the vehicle's most recent connection; False when not connected."""
        binding = self.bindings.get(push.vehicle_id)
        if binding is None or not binding.conns:
            return False
        binding.conns[-1].push(encode_message(push.type, push.data))
        if on_sent is not None:
            on_sent()
        return True
