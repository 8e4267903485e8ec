"""The gateways edge: the core's ROUTER for vehicle gateways (``--gateway-port``).

Theory of operation
-------------------
A vehicle gateway (:mod:`broker.gateway`) holds vehicle TCP connections and
forwards to the core every request it does not answer from its replica. On
the core each forwarded connection is a :class:`RemoteConn`: a core connection
id (from :data:`REMOTE_BASE` up, never one of the local vehicle edge's), the
gate's :class:`~broker.core.vehicle_auth.ConnAuth`, and the requests waiting
for their reply. It is bound to its vehicle in the vehicle edge's binding
table like a local connection, so pushes reach it the same way (its
``push`` sends a :class:`~broker.gateway.wire.PushTo` to its gateway).

Exactly once: every :class:`~broker.gateway.wire.Forward` names its request
``(gateway, conn, rid)``. The reply to a request that changed state is
persisted in the ``reply`` table in the same transaction as the change
(:meth:`GatewaysEdge.commit_replies`, called by the app's flush), so a request
resent after a core restart is answered from that table instead of being
applied twice. Entries older than :data:`KEEP_REPLIES_S` are deleted (a
gateway resends only within its ``--core-wait``), and at most
:data:`MAX_REPLIES` are kept.

Liveness: a gateway beats every :data:`~broker.gateway.wire.BEAT_S` and is
answered with a :class:`~broker.gateway.wire.Welcome`; one not heard for
:data:`~broker.gateway.wire.DEAD_S` is dropped with all its connections (their
ids are free again at once). Messages from a gateway that has not said
``hello`` to this core (it does not know yet that the core restarted) are
dropped and answered with a ``Welcome``, which makes it say ``hello`` and
resend what is unanswered. Pushes for a vehicle no connection is bound to,
made in the first :data:`HOLD_PUSHES_S` after the core started or after a
gateway was dropped as silent (while the gateways re-attach their connections:
a paused or cut-off gateway comes back with its vehicles still connected), wait
for that vehicle's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec
import zmq
import zmq.asyncio

from broker.auth import GATEWAYS_DOMAIN, Security
from broker.core.effects import Effect, Persist, Push, Reply
from broker.core.vehicle_auth import ConnAuth, VehicleAuth
from broker.edges.reply_order import Slot
from broker.edges.zmq_sockets import bind_socket, bound_endpoint, receive_loop, user_id_of
from broker.gateway.wire import (
    DEAD_S,
    Answer,
    Attach,
    Battery,
    Beat,
    Bound,
    Bye,
    Closed,
    Forward,
    Hello,
    PushTo,
    ToGateway,
    Welcome,
    decode_to_core,
    encode,
)
from common.codec import encode_reply
from common.errors import EVError, InternalError, PointUnreachable
from common.messages import VehicleRequest
from common.replies import Started, outcome_code, refusal
from common.request_codec import decode_request
from common.zmq_nowait import send_nowait

log = logging.getLogger(__name__)

REMOTE_BASE: Final = 1 << 40
REPLY_TABLE: Final = "reply"
KEEP_REPLIES_S: Final = 300.0
MAX_REPLIES: Final = 200_000
PRUNE_EVERY_S: Final = 10.0
HOLD_PUSHES_S: Final = 15.0
MAX_HELD_PUSHES: Final = 100_000
GATEWAY_SNDHWM: Final = 1_000_000
RECV_BATCH: Final = 256
EDGE: Final = "gateways"


class Host(Protocol):
    """What the edge needs from the app."""

    auth: VehicleAuth

    @property
    def last_seq(self) -> int: ...
    def vehicle_request(
        self,
        conn: int,
        vehicle_id: str,
        request: VehicleRequest,
        slot: Slot,
        address: str | None = None,
    ) -> None: ...
    def vehicle_record_reply(self, persist: Persist, reply: Reply, slot: Slot) -> None: ...
    def bind(self, vehicle_id: str, conn: Any) -> None: ...
    def unbind(self, vehicle_id: str, conn: Any) -> None: ...
    def battery(self, vehicle_id: str, level: float, latitude: float, longitude: float) -> None: ...
    def start_in_progress(self, vehicle_id: str) -> tuple[str, str] | None: ...
    def session_started(self, vehicle_id: str, session_id: str) -> bool: ...
    def persist(self, records: list[Persist]) -> None: ...
    def reject(self, edge: str, reason: str, detail: str = "") -> None: ...


@dataclass(eq=False, slots=True)
class Waiting:
    """A forwarded request whose reply has not gone out yet."""

    rid: int
    slot: Slot


@dataclass(eq=False, slots=True)
class Peer:
    """One gateway that said ``hello`` to this core."""

    routing_id: bytes
    name: str
    last_heard: float
    conns: dict[int, RemoteConn] = field(default_factory=dict)
    #: requests refused because a connection of this gateway holds their id: decided
    #: again once this gateway is heard from (it may have closed it) or found dead
    parked: list[tuple[RemoteConn, int, VehicleRequest]] = field(default_factory=list)


class RemoteConn:
    """A vehicle connection held by a gateway, as the core's gate and bindings see it."""

    __slots__ = ("auth", "conn_id", "edge", "gconn", "peer", "vehicle_id", "waiting")

    def __init__(self, edge: GatewaysEdge, peer: Peer, gconn: int, conn_id: int, auth: ConnAuth):
        self.edge = edge
        self.peer = peer
        self.gconn = gconn
        self.conn_id = conn_id
        self.auth = auth
        self.vehicle_id: str | None = None  # set by the binding table
        self.waiting: dict[int, Waiting] = {}  # id(slot) -> request waiting for its reply

    def push(self, payload: bytes) -> None:
        self.edge.send(self.peer, PushTo(self.gconn, payload))

    def bound(self) -> Bound | None:
        a = self.auth
        return None if a.vehicle_id is None else Bound(a.vehicle_id, a.proven, a.owns)

    def take_waiting(self, reply: Reply, slot: Slot | None) -> Waiting | None:
        """The request ``reply`` answers: its own slot's, else the oldest waiting one."""
        if slot is not None:
            return self.waiting.pop(id(slot), None)
        first: Waiting | None = None
        for key, w in self.waiting.items():
            if w.slot.waiting:
                rid = w.slot.request_id
                if rid == reply.request_id and type(rid) is type(reply.request_id):
                    return self.waiting.pop(key)
                if first is None:
                    first = w
        if first is not None:
            self.waiting.pop(id(first.slot))
        return first


class GatewaysEdge:
    """The ROUTER the gateways connect to, and the committed-reply table."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        host: Host,
        welcome: Welcome,
        committed: dict[str, tuple[bytes, float]],
        security: Security | None = None,
    ) -> None:
        self._ctx = ctx
        self._endpoint = endpoint
        self.host = host
        self._welcome = welcome
        self.committed = committed  # key -> (reply line, when committed)
        #: key -> (session id, point id, vehicle id, when) of a ``chegada`` whose start
        #: was sent and whose reply waits for the station's ack (persisted with the start)
        self.starts: dict[str, tuple[str, str, str, float]] = {}
        self._security = security
        self._sock: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.peers: dict[bytes, Peer] = {}
        self.remotes: dict[int, RemoteConn] = {}
        self._next_conn = REMOTE_BASE
        self._resolved: dict[int, tuple[RemoteConn, int, bytes, str]] = {}
        self._started = time.monotonic()
        #: pushes for unbound vehicles are held until then (start, or a gateway dropped)
        self._hold_until = self._started + HOLD_PUSHES_S
        self._held: deque[tuple[float, Push]] = deque()
        self.stats: dict[str, int] = {
            "received": 0,
            "forwarded": 0,
            "resent_answered": 0,
            "dropped": 0,
            "malformed": 0,
            "gateways_lost": 0,
        }

    @staticmethod
    def boot_id() -> str:
        return uuid.uuid4().hex[:12]

    @property
    def endpoint(self) -> str:
        return bound_endpoint(self._sock, self._endpoint)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        options: dict[int, int | bytes] = {
            zmq.LINGER: 0,
            zmq.ROUTER_MANDATORY: 1,
            zmq.SNDHWM: GATEWAY_SNDHWM,
            zmq.RCVHWM: GATEWAY_SNDHWM,
        }
        if self._security is not None:
            options.update(self._security.server_options(GATEWAYS_DOMAIN))
        self._sock = bind_socket(
            self._ctx, zmq.ROUTER, self._endpoint, "the gateways ROUTER", options
        )
        self._started = time.monotonic()
        self._hold_until = self._started + HOLD_PUSHES_S
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._recv(self._sock), name="gateways-recv"),
            loop.create_task(self._sweep_loop(), name="gateways-sweep"),
        ]
        log.info("gateways ROUTER bound on %s", self.endpoint)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    # --- receiving ----------------------------------------------------------------------

    async def _recv(self, sock: zmq.asyncio.Socket) -> None:
        if self._security is None:
            await receive_loop(sock, self.handle_frames, "gateways ROUTER", batch=RECV_BATCH)
            return

        def secured(received: list[zmq.Frame]) -> None:
            user = user_id_of(received[-1]) if received else None
            if self._security is None or self._security.keyring.gateway(user) is None:
                self.host.reject(EDGE, "credential_revoked", repr(user))
                return
            self.handle_frames([f.bytes for f in received])

        await receive_loop(sock, secured, "gateways ROUTER", copy=False, batch=RECV_BATCH)

    def handle_frames(self, frames: list[bytes]) -> None:
        self.stats["received"] += 1
        if len(frames) != 2:
            self.stats["malformed"] += 1
            return
        routing_id, frame = frames
        try:
            message = decode_to_core(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.stats["malformed"] += 1
            self.host.reject(EDGE, "malformed", str(exc)[:200])
            return
        try:
            self._dispatch(routing_id, message)
        except Exception:
            log.exception("gateway message %s failed", type(message).__name__)

    def _dispatch(self, routing_id: bytes, message: Any) -> None:
        now = time.monotonic()
        if isinstance(message, Hello):
            self._hello(routing_id, message, now)
            return
        peer = self.peers.get(routing_id)
        if peer is None:  # a gateway that has not greeted this core: make it
            if not isinstance(message, Bye):
                self._send_raw(routing_id, msgspec.structs.replace(self._welcome_now(), greet=True))
            return
        peer.last_heard = now
        match message:
            case Forward():
                self._forward(peer, message)
            case Beat():
                self.send(peer, self._welcome_now())
            case Closed(conn=gconn):
                remote = peer.conns.pop(gconn, None)
                if remote is not None:
                    self._release(remote)
            case Battery():
                self.host.battery(
                    message.vehicle_id, message.level, message.latitude, message.longitude
                )
            case Bye():
                self._drop_peer(peer)
        if peer.parked:  # heard from after what it sent before (a Closed among it)
            self._unpark(peer)

    def _welcome_now(self) -> Welcome:
        return msgspec.structs.replace(self._welcome, seq=self.host.last_seq)

    def _hello(self, routing_id: bytes, hello: Hello, now: float) -> None:
        old = self.peers.get(routing_id)
        if old is not None:
            self._drop_peer(old)
        peer = self.peers[routing_id] = Peer(routing_id, hello.gateway, now)
        log.info("gateway %s: hello with %d bound connections", hello.gateway, len(hello.conns))
        for attach in hello.conns:
            self._attach(peer, attach)
        self.send(peer, self._welcome_now())

    def _new_remote(self, peer: Peer, gconn: int, address: str, default_id: str) -> RemoteConn:
        self._next_conn += 1
        remote = RemoteConn(
            self, peer, gconn, self._next_conn, ConnAuth(self._next_conn, address, default_id)
        )
        peer.conns[gconn] = remote
        self.remotes[remote.conn_id] = remote
        return remote

    def _attach(self, peer: Peer, attach: Attach) -> None:
        remote = self._new_remote(peer, attach.conn, attach.address, attach.default_id)
        b = attach.bound
        if self.host.auth.adopt(remote.auth, b.vehicle_id, proven=b.proven, owns=b.owns):
            self.host.bind(b.vehicle_id, remote)
            self._deliver_held(b.vehicle_id, remote)

    def _release(self, remote: RemoteConn) -> None:
        self.remotes.pop(remote.conn_id, None)
        remote.waiting.clear()
        self.host.auth.closed(remote.auth)
        if remote.vehicle_id is not None:
            self.host.unbind(remote.vehicle_id, remote)

    def _drop_peer(self, peer: Peer) -> None:
        if self.peers.get(peer.routing_id) is peer:
            del self.peers[peer.routing_id]
        for remote in list(peer.conns.values()):
            self._release(remote)
        peer.conns.clear()
        self._unpark(peer)

    def _unpark(self, peer: Peer) -> None:
        parked, peer.parked = peer.parked, []
        for remote, rid, request in parked:
            if remote.conn_id in self.remotes:
                self._handle(remote, rid, request, park=False)

    def _holder(self, vehicle_id: str, remote: RemoteConn) -> Peer | None:
        """Another gateway whose connection holds ``vehicle_id`` (None: none, or this one)."""
        owner = self.host.auth.owner_of(vehicle_id)
        holder = self.remotes.get(owner) if owner is not None else None
        if holder is None or holder.peer is remote.peer:
            return None
        return holder.peer

    # --- requests -----------------------------------------------------------------------

    def _forward(self, peer: Peer, fwd: Forward) -> None:
        self.stats["forwarded"] += 1
        key = reply_key(peer.name, fwd.conn, fwd.rid)
        done = self.committed.get(key)
        remote = peer.conns.get(fwd.conn)
        if done is not None:  # resent after a restart: the committed reply, not a second change
            self.stats["resent_answered"] += 1
            bound = remote.bound() if remote is not None else None
            self.send(peer, Answer(fwd.conn, fwd.rid, done[0], self.host.last_seq, bound))
            return
        start = self.starts.get(key)
        if start is not None and self.host.start_in_progress(start[2]) is None:
            self._start_resolved(peer, remote, fwd, key, start)
            return
        if remote is None:
            remote = self._new_remote(peer, fwd.conn, fwd.address, fwd.default_id)
        elif any(w.rid == fwd.rid for w in remote.waiting.values()) or any(
            p[0] is remote and p[1] == fwd.rid for peer in self.peers.values() for p in peer.parked
        ):
            return  # already in hand: its reply is on the way
        remote.auth.address = fwd.address
        try:
            request = decode_request(fwd.request)
        except EVError as exc:
            self._answer_error(remote, fwd.rid, exc, msgspec.UNSET)
            return
        self._handle(remote, fwd.rid, request)

    def _handle(
        self, remote: RemoteConn, rid: int, request: VehicleRequest, *, park: bool = True
    ) -> None:
        """The vehicle edge's request path (vehicles_tcp) for a gateway's connection.

        An id held by a connection of another gateway is not refused at once: that
        gateway may have died with it (a vehicle reconnecting through another one),
        so the request waits until that gateway is heard from or found dead.
        """
        host = self.host
        verdict = host.auth.admit(remote.auth, request.type, request.data, time.time())
        if verdict.error is not None and park and verdict.error.code == "forbidden":
            holder = self._holder(verdict.vehicle_id, remote)
            if holder is not None:
                holder.parked.append((remote, rid, request))
                return
        if verdict.error is not None:
            host.reject("vehicles", verdict.error.code)
            self._answer_error(remote, rid, verdict.error, request.id)
            return
        vehicle_id = verdict.vehicle_id
        if verdict.bind and remote.vehicle_id != vehicle_id:
            if remote.vehicle_id is not None:
                host.unbind(remote.vehicle_id, remote)
            host.bind(vehicle_id, remote)
        slot = Slot(request.type, request.id, time.perf_counter())
        remote.waiting[id(slot)] = Waiting(rid, slot)
        if verdict.reply is not None:
            rtype, data = verdict.reply
            reply = Reply(remote.conn_id, request.id, rtype, data)
            if verdict.persist is not None:  # a token is confirmed only once it is stored
                host.vehicle_record_reply(verdict.persist, reply, slot)
            else:
                self.deliver_reply(reply, slot)
            return
        try:
            # the vehicle's own address: the core's per-address caps hold across gateways
            host.vehicle_request(
                remote.conn_id, vehicle_id, request, slot, remote.auth.address or None
            )
            if request.type == "chegada" and id(slot) in remote.waiting:
                self._start_sent(remote, rid, vehicle_id)
        except EVError as exc:
            remote.waiting.pop(id(slot), None)
            self._answer_error(remote, rid, exc, request.id)
        except Exception:
            log.exception("request %s from %s failed", request.type, vehicle_id)
            remote.waiting.pop(id(slot), None)
            self._answer_error(remote, rid, InternalError("internal error"), request.id)

    def _start_sent(self, remote: RemoteConn, rid: int, vehicle_id: str) -> None:
        """A ``chegada`` whose reply waits for the station: remember it with the start.

        Should the core restart before the ack and the station finish that session
        before the gateway resends the request, the resend is answered from this
        record (the session started, or the start failed) instead of starting again.
        """
        start = self.host.start_in_progress(vehicle_id)
        if start is None:
            return
        key = reply_key(remote.peer.name, remote.gconn, rid)
        now = time.time()
        session_id, point_id = start
        self.starts[key] = (session_id, point_id, vehicle_id, now)
        record = {"start": session_id, "point": point_id, "vehicle": vehicle_id, "at": now}
        self.host.persist([Persist(REPLY_TABLE, key, record)])

    def _start_resolved(
        self,
        peer: Peer,
        remote: RemoteConn | None,
        fwd: Forward,
        key: str,
        start: tuple[str, str, str, float],
    ) -> None:
        """A resent ``chegada`` whose start the core resolved without it (after a restart)."""
        session_id, point_id, vehicle_id, _at = start
        try:
            request_id = decode_request(fwd.request).id
        except EVError:
            request_id = msgspec.UNSET
        data: Any
        if self.host.session_started(vehicle_id, session_id):
            data, outcome = (
                Started(
                    message="Charging started",
                    vehicle_id=vehicle_id,
                    id_ponto_recarga=point_id,
                    session_id=session_id,
                ),
                "ok",
            )
        else:
            err = PointUnreachable("Station did not confirm the start; reservation kept")
            data, outcome = refusal(err, vehicle_id, point_id), err.code
        payload = encode_reply("chegada_response", data, request_id)
        now = time.time()
        del self.starts[key]
        self.committed[key] = (payload, now)
        self.host.persist([Persist(REPLY_TABLE, key, {"line": payload.decode(), "at": now})])
        bound = remote.bound() if remote is not None else None
        self.send(peer, Answer(fwd.conn, fwd.rid, payload, self.host.last_seq, bound, outcome))

    def _answer_error(self, remote: RemoteConn, rid: int, exc: EVError, request_id: Any) -> None:
        payload = encode_reply("erro", exc.to_wire(), request_id)
        answer = Answer(remote.gconn, rid, payload, self.host.last_seq, remote.bound(), exc.code)
        self.send(remote.peer, answer)

    # --- replies ------------------------------------------------------------------------

    def commit_replies(
        self, effects: Iterable[Effect], slots: dict[int, Slot], now: float
    ) -> list[Persist]:
        """The replies to gateway requests in a batch about to be committed, as records.

        Called before the batch's commit; the replies then go out with the bytes
        committed here (:meth:`deliver_reply`).
        """
        out: list[Persist] = []
        remotes = self.remotes
        for effect in effects:
            if type(effect) is not Reply or effect.conn < REMOTE_BASE:
                continue
            remote = remotes.get(effect.conn)
            if remote is None:
                continue
            waiting = remote.take_waiting(effect, slots.get(id(effect)))
            if waiting is None:
                continue
            payload = _line(effect)
            key = reply_key(remote.peer.name, remote.gconn, waiting.rid)
            self.committed[key] = (payload, now)
            self.starts.pop(key, None)
            outcome = outcome_code(effect.type, effect.data)
            self._resolved[id(effect)] = (remote, waiting.rid, payload, outcome)
            out.append(Persist(REPLY_TABLE, key, {"line": payload.decode(), "at": now}))
        return out

    def deliver_reply(self, reply: Reply, slot: Slot | None) -> None:
        """Send ``reply`` to the gateway holding its connection (dropped if it is gone)."""
        resolved = self._resolved.pop(id(reply), None)
        if resolved is None:
            remote = self.remotes.get(reply.conn)
            if remote is None:
                return
            waiting = remote.take_waiting(reply, slot)
            if waiting is None:
                log.warning("reply %s to a gateway connection matches no request", reply.type)
                return
            resolved = (remote, waiting.rid, _line(reply), outcome_code(reply.type, reply.data))
        remote, rid, payload, outcome = resolved
        seq = self.host.last_seq
        self.send(remote.peer, Answer(remote.gconn, rid, payload, seq, remote.bound(), outcome))

    def hold_push(self, push: Push) -> None:
        """A push for a vehicle not bound anywhere: held while the gateways re-attach (after
        the core started, or after a gateway was dropped as silent: paused or cut off, it
        may come back with its connections still open)."""
        now = time.monotonic()
        if now < self._hold_until and len(self._held) < MAX_HELD_PUSHES:
            self._held.append((now, push))

    def _deliver_held(self, vehicle_id: str, remote: RemoteConn) -> None:
        if not self._held:
            return
        keep: deque[tuple[float, Push]] = deque()
        for at, push in self._held:
            if push.vehicle_id == vehicle_id:
                remote.push(encode_reply(push.type, push.data))
            else:
                keep.append((at, push))
        self._held = keep

    # --- sending ------------------------------------------------------------------------

    def send(self, peer: Peer, message: ToGateway) -> None:
        self._send_raw(peer.routing_id, message)

    def _send_raw(self, routing_id: bytes, message: ToGateway) -> None:
        sock = self._sock
        if sock is None:
            return
        exc = send_nowait(sock, [routing_id, encode(message)])
        if exc is not None:
            self.stats["dropped"] += 1
            if exc.errno != errno.EHOSTUNREACH:
                log.warning("gateway %r: message dropped: %r", routing_id, exc)

    # --- housekeeping -------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(DEAD_S / 4)
            now = time.monotonic()
            for peer in list(self.peers.values()):
                if now - peer.last_heard > DEAD_S:
                    log.warning(
                        "gateway %s silent for %.1f s: its %d connections are released",
                        peer.name,
                        now - peer.last_heard,
                        len(peer.conns),
                    )
                    self.stats["gateways_lost"] += 1
                    self._drop_peer(peer)
                    self._hold_until = max(self._hold_until, now + HOLD_PUSHES_S)
            if self._held and now > self._hold_until:
                self._held.clear()
            if now - last_prune >= PRUNE_EVERY_S:
                last_prune = now
                stale = self.prune(time.time())
                if stale:
                    self.host.persist(stale)

    def prune(self, now: float) -> list[Persist]:
        """Forget committed replies older than KEEP_REPLIES_S (and the oldest past MAX_REPLIES)."""
        committed = self.committed
        gone = [k for k, (_line, at) in committed.items() if now - at > KEEP_REPLIES_S]
        over = len(committed) - len(gone) - MAX_REPLIES
        if over > 0:
            young = sorted(
                (at, k) for k, (_line, at) in committed.items() if now - at <= KEEP_REPLIES_S
            )
            gone.extend(k for _at, k in young[:over])
        for key in gone:
            committed.pop(key, None)
        old = [k for k, start in self.starts.items() if now - start[3] > KEEP_REPLIES_S]
        for key in old:
            del self.starts[key]
        gone.extend(old)
        return [Persist(REPLY_TABLE, key, None) for key in gone]


def reply_key(gateway: str, conn: int, rid: int) -> str:
    return f"{gateway}/{conn}/{rid}"


def _line(reply: Reply) -> bytes:
    return encode_reply(reply.type, reply.data, reply.request_id, truncated=reply.truncated)


def load_committed(records: Iterable[tuple[str, str, Any]]) -> dict[str, tuple[bytes, float]]:
    """The committed replies among the store's records."""
    out: dict[str, tuple[bytes, float]] = {}
    for table, key, value in records:
        if table == REPLY_TABLE and isinstance(value, dict):
            line, at = value.get("line"), value.get("at")
            if isinstance(line, str) and isinstance(at, int | float):
                out[key] = (line.encode(), float(at))
    return out


def load_starts(
    records: Iterable[tuple[str, str, Any]],
) -> dict[str, tuple[str, str, str, float]]:
    """The ``chegada`` requests whose start was sent and not answered, among the records."""
    out: dict[str, tuple[str, str, str, float]] = {}
    for table, key, v in records:
        if table == REPLY_TABLE and isinstance(v, dict) and "start" in v:
            try:
                out[key] = (str(v["start"]), str(v["point"]), str(v["vehicle"]), float(v["at"]))
            except (KeyError, TypeError, ValueError):
                continue
    return out
