"""The gateway's vehicle edge: the core's own :mod:`broker.edges.vehicles_tcp`, another handler.

Connections, decoding, fairness, backpressure and reply order are the vehicle
edge's (:class:`~broker.edges.vehicles_tcp.VehicleConnection`); this module
only decides, per request, who answers it:

* ``ping``, ``bateria`` and ``consulta`` of a connection the core has bound to
  a vehicle (naming that vehicle or none) are answered here from the replica
  with the core's read path (:mod:`broker.core.read_path`). Such a read waits
  (in its slot: replies keep request order) until every earlier request of the
  connection is answered and the replica has applied the seq of the last write
  (read your writes).
* Everything else, and the first request of a connection (the core's gate
  decides who it speaks for), is forwarded to the core
  (:class:`broker.gateway.link.CoreLink`); the answer fills the request's slot.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Final

import msgspec

from broker.core.read_path import bateria_points, consulta_points
from broker.edges.reply_order import Slot
from broker.edges.vehicles_tcp import VehicleConnection, VehicleServer
from broker.gateway.link import CoreLink
from broker.gateway.replica import Replica
from broker.gateway.wire import Attach, Battery, Bound
from common.codec import encode_reply
from common.errors import Unavailable
from common.messages import Bateria, Consulta, Ping, VehicleRequest
from common.replies import PONG

log = logging.getLogger(__name__)

READS: Final = frozenset({"ping", "bateria", "consulta"})
#: the core boot of a request held behind a read (not sent yet)
HELD: Final = "held"
MAX_LOW_BATTERY: Final = 100_000  # vehicles remembered as told about their low battery


class GatewayConnection(VehicleConnection):
    """A vehicle connection of a gateway: what the core bound it to, what waits."""

    def __init__(self, server: VehicleServer, conn_id: int) -> None:
        super().__init__(server, conn_id)
        self.bound: Bound | None = None
        self.need_seq = 0  # a read waits until the replica applied this seq
        self.rid = 0  # forwarded requests so far (the id of the last one)
        # forwarded, unanswered: rid -> (slot, request JSON, when, core boot it was sent to)
        self.outstanding: dict[int, list[Any]] | None = None
        # in arrival order: reads waiting for earlier replies or the replica
        # ``(slot, request, vehicle, rid before)``, and requests held behind such a
        # read ``(None, None, "", rid)`` (forwarded once the read is answered)
        self.deferred: deque[tuple[Slot | None, VehicleRequest | None, str, int]] | None = None

    def attach(self) -> Attach | None:
        if self.bound is None or not (self.bound.proven or self.bound.owns):
            return None
        return Attach(self.conn_id, self.auth.address, self.auth.default_id, self.bound)


class GatewayServer(VehicleServer):
    """The vehicle edge of one gateway process."""

    link: CoreLink
    replica: Replica

    def setup(self, link: CoreLink, replica: Replica) -> None:
        self.link = link
        self.replica = replica
        self.low_battery = 20.0
        self.low_battery_rearm = 25.0
        self._told_low: set[str] = set()
        self._waiting: set[GatewayConnection] = set()  # connections with deferred reads
        self._busy: set[GatewayConnection] = set()  # connections with forwarded requests
        replica.on_applied(self._replica_advanced)
        self.stats = {"local": 0, "forwarded": 0, "unavailable": 0, "deferred": 0}

    def _factory(self) -> VehicleConnection:
        self._next_conn += 1
        return GatewayConnection(self, self._next_conn)

    # --- requests -----------------------------------------------------------------------

    def handle_request(self, conn: VehicleConnection, request: VehicleRequest) -> None:
        assert isinstance(conn, GatewayConnection)
        rtype = request.type
        if rtype in READS and self.replica.ready:
            named = getattr(request.data, "id_veiculo", None)
            bound = conn.bound
            vid: str | None = None
            if bound is not None and (named is None or named == bound.vehicle_id):
                vid = bound.vehicle_id
            elif rtype == "ping" and named is None:
                vid = conn.auth.default_id
            if vid is not None:
                self._read(conn, request, vid)
                return
        self._forward(conn, request)

    def _read(self, conn: GatewayConnection, request: VehicleRequest, vid: str) -> None:
        self.stats["local"] += 1
        slot = conn.replies.open(request.type, request.id, time.perf_counter())
        if conn.outstanding or conn.deferred or self.replica.applied_seq < conn.need_seq:
            if conn.deferred is None:
                conn.deferred = deque()
            conn.deferred.append((slot, request, vid, conn.rid))
            self._waiting.add(conn)
            self.stats["deferred"] += 1
            return
        self._answer_read(conn, slot, request, vid)

    def _answer_read(
        self, conn: GatewayConnection, slot: Slot, request: VehicleRequest, vid: str
    ) -> None:
        data = request.data
        now = time.time()
        reads = self.replica.reads
        truncated = False
        reply: Any
        if isinstance(data, Bateria):
            self._battery(vid, data)
            reply = bateria_points(reads, data, now)
        elif isinstance(data, Consulta):
            reply, truncated = consulta_points(reads, data, now)
        else:
            assert isinstance(data, Ping)
            reply = PONG
        rtype = {"ping": "pong", "bateria": "bateria_response", "consulta": "consulta_response"}
        kind = rtype[request.type]
        conn.fill(slot, encode_reply(kind, reply, request.id, truncated=truncated), kind, reply)

    def _battery(self, vid: str, data: Bateria) -> None:
        """The core's low-battery rule needs to hear of a crossing only (a read stays here)."""
        level = data.nivel_bateria
        told = self._told_low
        if level < self.low_battery and vid not in told:
            if len(told) >= MAX_LOW_BATTERY:
                told.clear()
            told.add(vid)
        elif level >= self.low_battery_rearm and vid in told:
            told.discard(vid)
        else:
            return
        loc = data.localizacao
        self.link.send(Battery(vid, level, loc.latitude, loc.longitude))

    def _forward(self, conn: GatewayConnection, request: VehicleRequest) -> None:
        self.stats["forwarded"] += 1
        slot = conn.replies.open(request.type, request.id, time.perf_counter())
        slot.waiting = True
        conn.rid += 1
        if conn.outstanding is None:
            conn.outstanding = {}
        entry: list[Any] = [slot, msgspec.json.encode(request), time.monotonic(), None]
        conn.outstanding[conn.rid] = entry
        self._busy.add(conn)
        if conn.deferred:  # a read before it waits: it must not see this request's change
            entry[3] = HELD
            self.link.unsent = True
            conn.deferred.append((None, None, "", conn.rid))
            return
        self.link.forward(conn, conn.rid, entry)

    # --- answers from the core ----------------------------------------------------------

    def answered(
        self,
        conn_id: int,
        rid: int,
        payload: bytes,
        seq: int,
        bound: Bound | None,
        outcome: str = "ok",
    ) -> None:
        conn = self.conns.get(conn_id)
        if not isinstance(conn, GatewayConnection) or not conn.outstanding:
            return
        entry = conn.outstanding.pop(rid, None)
        if entry is None:
            return  # answered already (a resend's second answer)
        if not conn.outstanding:
            self._busy.discard(conn)
        if bound is not None or conn.bound is None:
            conn.bound = bound
        if seq > conn.need_seq:
            conn.need_seq = seq
        # the core's outcome stands for the reply's type and data in the metrics
        if outcome == "ok":
            conn.fill(entry[0], payload, "", None)
        else:
            conn.fill(entry[0], payload, "erro", {"code": outcome})
        if conn.deferred:
            self._release(conn)

    def unavailable(self, conn: GatewayConnection, rid: int) -> None:
        """The core did not answer within ``--core-wait``: ``erro unavailable``."""
        assert conn.outstanding is not None
        entry = conn.outstanding.pop(rid)
        if not conn.outstanding:
            self._busy.discard(conn)
        slot = entry[0]
        self.stats["unavailable"] += 1
        wire = Unavailable("the broker core is unavailable; try again").to_wire()
        conn.fill(slot, encode_reply("erro", wire, slot.request_id), "erro", wire)
        if conn.deferred:
            self._release(conn)

    def push(self, conn_id: int, payload: bytes) -> None:
        conn = self.conns.get(conn_id)
        if conn is not None:
            conn.push(payload)

    # --- deferred reads -----------------------------------------------------------------

    def _release(self, conn: GatewayConnection) -> None:
        """Answer the deferred reads of ``conn`` that may go now, in order."""
        deferred = conn.deferred
        applied = self.replica.applied_seq
        while deferred:
            slot, request, vid, before = deferred[0]
            if slot is None:  # a request held behind the reads answered now
                deferred.popleft()
                entry = conn.outstanding.get(before) if conn.outstanding else None
                if entry is not None:
                    entry[3] = None
                    self.link.forward(conn, before, entry)
                continue
            assert request is not None
            if conn.outstanding and min(conn.outstanding) <= before:
                break  # an earlier request is still unanswered
            if applied < conn.need_seq:
                break
            deferred.popleft()
            self._answer_read(conn, slot, request, vid)
        if not deferred:
            self._waiting.discard(conn)

    def _replica_advanced(self, applied_seq: int) -> None:
        for conn in list(self._waiting):
            if conn.transport is None:
                self._waiting.discard(conn)
            elif conn.need_seq <= applied_seq:
                self._release(conn)

    # --- connections --------------------------------------------------------------------

    def connection_closed(self, conn: VehicleConnection) -> None:
        assert isinstance(conn, GatewayConnection)
        self._waiting.discard(conn)
        self._busy.discard(conn)
        conn.deferred = None
        conn.outstanding = None
        if conn.rid or conn.bound is not None:
            self.link.closed(conn.conn_id)

    def attachments(self) -> list[Attach]:
        out = []
        for conn in self.conns.values():
            if isinstance(conn, GatewayConnection):
                a = conn.attach()
                if a is not None:
                    out.append(a)
        return out

    def outstanding(self, held: bool = False) -> list[tuple[GatewayConnection, int, list[Any]]]:
        """Forwarded requests not answered yet (``held``: those held behind a read too)."""
        out: list[tuple[GatewayConnection, int, list[Any]]] = []
        for conn in self._busy:
            if conn.outstanding:
                out.extend(
                    (conn, rid, entry)
                    for rid, entry in conn.outstanding.items()
                    if held or entry[3] != HELD
                )
        return out
