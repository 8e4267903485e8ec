"""Asyncio client for the vehicle protocol (TCP, JSON lines).

Theory of operation
-------------------
One :class:`VehicleClient` owns one persistent TCP connection to the broker.
Every request carries an ``id`` from a counter; replies are matched to their
request by that id, so any number of requests may be in flight at once
(pipelining). A reply ``erro`` becomes the exception class of its wire code
(:func:`common.errors.error_for_code`); a typed ``*_response`` whose
``status`` is ``error`` becomes the :class:`~common.errors.RequestRefused`
subclass of its ``code`` when a typed method (``reserva``, ``chegada``...)
sent it. Lines without an ``id`` are pushes (``sua_vez``, ``custo_final``...)
and go to every subscriber: plain callbacks and :class:`PushStream` async
iterators (bounded, drop-oldest with a counter).

Authentication: with a ``token`` the client sends ``autenticar`` as the first
request of every connection (and reconnection) before anything else goes out;
with ``register=True`` and no token it sends ``registrar`` instead and hands
the new token to ``on_token`` (to be stored: it is shown only once). A refused
proof raises on :meth:`connect` (``forbidden``, ``rate_limited``, or
:class:`~common.errors.AlreadyRegistered` when the id is taken and no token is
known). A broker that does not know ``registrar`` (``unknown_type``, from
before vehicle authentication) is used without it.

When the connection breaks, requests in flight fail with
:class:`~common.errors.BrokerUnreachable` (they are not resent: a ``reserva``
may or may not have been applied), and the client reconnects in the
background with exponential backoff. After reconnecting it proves its id
again, or re-binds it (a ``status`` request) when it has no token, so that
pushes find the new connection.
Requests issued while reconnecting wait for the connection within their own
timeout. Each request has a timeout (:class:`~common.errors.RequestTimeout`);
a reply that arrives later is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from common.codec import decode_reply, encode_request
from common.errors import (
    AlreadyRegistered,
    BrokerUnreachable,
    EVError,
    RefusedInvalid,
    RequestTimeout,
    TransportError,
    UnknownType,
    error_for_code,
)
from common.messages import PUSH_TYPES
from common.ports import VEHICLE_PORT
from common.timeutil import format_timestamp
from vehicle.pushes import STREAM_CAPACITY, Push, PushCallback, PushStream

__all__ = ["Push", "PushCallback", "PushStream", "Reply", "VehicleClient"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 10.0
CONNECT_TIMEOUT: Final = 3.0
BACKOFF_INITIAL: Final = 0.1
BACKOFF_MAX: Final = 5.0
#: how long a client told ``already_registered`` looks for a token another client kept
TOKEN_RACE_S: Final = 2.0
READ_LIMIT: Final = 16 * 1024 * 1024  # a reply line larger than this is a broken peer


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply to one request: its ``type`` and ``data`` (a dict, or a list for consulta)."""

    type: str
    data: Any


class _Wire(asyncio.Protocol):
    """Moves bytes between the socket and the client; no logic of its own."""

    def __init__(self, client: VehicleClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.lost = asyncio.get_running_loop().create_future()
        self.can_write: asyncio.Event = asyncio.Event()
        self.can_write.set()
        self.out: list[bytes] = []

    def send(self, data: bytes) -> None:
        """Queue ``data``; everything queued in one loop turn goes out in one write."""
        if not self.out:
            asyncio.get_running_loop().call_soon(self.flush)
        self.out.append(data)

    def flush(self) -> None:
        out, self.out = self.out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        if b"\n" not in buf:
            self.buffer = buf
            if len(buf) > READ_LIMIT and self.transport is not None:
                self.transport.close()
            return
        *lines, self.buffer = buf.split(b"\n")
        handle = self.client._handle_line
        for line in lines:
            if line.strip():
                handle(line)

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()
        if not self.lost.done():
            self.lost.set_result(None)
        self.client._connection_lost(self, exc)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()


class VehicleClient:
    """One vehicle's persistent connection to the broker, with typed methods.

    Use as ``async with VehicleClient(host, port, vehicle_id) as c: await c.bateria(...)``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = VEHICLE_PORT,
        vehicle_id: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        reconnect: bool = True,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        timestamps: bool = True,
        token: str | None = None,
        register: bool = False,
        on_token: Callable[[str], None] | None = None,
        load_token: Callable[[], str | None] | None = None,
    ) -> None:
        self.host = host
        self.token = token
        self.register = register
        self.on_token = on_token
        self.load_token = load_token
        self.auth_seconds = 0.0  # time spent proving the id, summed over connections
        self.port = port
        self.vehicle_id = vehicle_id
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.timestamps = timestamps
        self.reconnects = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._wire: _Wire | None = None
        self._connected = asyncio.Event()
        self._ever_connected = False
        self._open_lock = asyncio.Lock()
        self._closed = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self._callbacks: list[PushCallback] = []
        self._streams: set[PushStream] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- connection ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def __aenter__(self) -> VehicleClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _open(self) -> _Wire:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, wire = await loop.create_connection(lambda: _Wire(self), self.host, self.port)
        except TimeoutError:
            raise BrokerUnreachable(
                f"broker {self.host}:{self.port} did not accept within {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise BrokerUnreachable(
                f"cannot reach broker {self.host}:{self.port}: {reason}"
            ) from exc
        self._wire = wire
        if self.vehicle_id and (self.token or self.register):
            try:
                await self._prove(wire)
            except BaseException:
                self._wire = None
                if wire.transport is not None:
                    wire.transport.close()
                raise
        self._ever_connected = True
        self._connected.set()
        return wire

    async def _prove(self, wire: _Wire) -> None:
        """``autenticar`` with the token, or ``registrar`` for one, before anything else."""
        assert self.vehicle_id is not None
        started = time.perf_counter()
        limit = self.timeout
        if self.token:
            await self._exchange(
                wire, "autenticar", {"id_veiculo": self.vehicle_id, "token": self.token}, limit
            )
        else:
            try:
                reply = await self._exchange(
                    wire, "registrar", {"id_veiculo": self.vehicle_id}, limit
                )
            except UnknownType:  # a broker from before vehicle authentication
                log.info("broker %s:%s does not register vehicles", self.host, self.port)
                self.register = False
                return
            data = reply.data if isinstance(reply.data, dict) else {}
            token = data.get("token")
            if data.get("code") != "registered" or not isinstance(token, str):
                kept = await self._token_kept_meanwhile()
                if kept is None:
                    raise AlreadyRegistered(
                        f"vehicle {self.vehicle_id} is registered on {self.host}:{self.port} "
                        "and this client has no token for it: use another id, or the token "
                        "given when it was registered"
                    )
                self.token = kept
                await self._exchange(
                    wire, "autenticar", {"id_veiculo": self.vehicle_id, "token": kept}, limit
                )
            else:
                self.token = token
                if self.on_token is not None:
                    self.on_token(token)
        self.auth_seconds += time.perf_counter() - started

    async def _token_kept_meanwhile(self) -> str | None:
        """A token another client of the same store kept while this one asked for one.

        Two programs started at once with the same id and token store (a trip and a
        status probe, say) both find no token and both send ``registrar``: the broker
        registers the first, tells the second ``already_registered``, and the first
        keeps its token a moment later. The second then reads it from the store
        (``load_token``) for up to :data:`TOKEN_RACE_S` instead of failing.
        """
        if self.load_token is None:
            return None
        deadline = time.monotonic() + TOKEN_RACE_S
        while True:
            token = self.load_token()
            if token:
                return token
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)

    async def connect(self, *, bind: bool = False) -> None:
        """Open the connection; with ``bind``, also bind the vehicle id (for pushes)."""
        if self._closed:
            raise TransportError("client is closed")
        if not self.connected:
            async with self._open_lock:
                if not self.connected:
                    await self._open()
        if bind and self.vehicle_id:
            await self.status()

    async def close(self) -> None:
        """Close the connection for good; pending requests fail, push streams end."""
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reconnect_task
        wire = self._wire
        self._connected.clear()
        if wire is not None and wire.transport is not None:
            wire.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(wire.lost), 1.0)
        self._fail_pending(TransportError("client closed"))
        for stream in list(self._streams):
            stream.end()
        self._streams.clear()
        for task in list(self._tasks):
            task.cancel()

    def _connection_lost(self, wire: _Wire, exc: Exception | None) -> None:
        if wire is not self._wire:
            return
        self._wire = None
        self._connected.clear()
        self._fail_pending(BrokerUnreachable("connection to the broker was lost"))
        if not self._closed and self.reconnect and self._reconnect_task is None:
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = self.backoff_initial
        try:
            while not self._closed:
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                try:
                    await self._open()
                except BrokerUnreachable as exc:
                    log.debug("reconnect failed: %s", exc)
                    delay = min(delay * 2, self.backoff_max)
                    continue
                except EVError as exc:  # the broker refused the proof: retrying cannot help
                    log.error(
                        "reconnected, but %s could not prove its id: %s", self.vehicle_id, exc
                    )
                    self._fail_pending(exc)
                    return
                self.reconnects += 1
                break
        finally:
            self._reconnect_task = None
        if self.vehicle_id and not self._closed and not self.token:
            try:
                await self.status()  # re-bind the id so pushes reach this connection
            except EVError as exc:
                log.warning("re-binding %s after reconnect failed: %s", self.vehicle_id, exc)

    async def _wait_connected(self, timeout: float) -> _Wire:
        if self._closed:
            raise TransportError("client is closed")
        wire = self._wire
        if wire is not None and self._connected.is_set():
            return wire
        if not self._ever_connected:  # lazy first connection, shared by concurrent callers
            async with self._open_lock:
                if self._wire is not None and self._connected.is_set():
                    return self._wire
                return await self._open()
        if not self.reconnect:
            raise BrokerUnreachable("not connected to the broker")
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise BrokerUnreachable(
                f"broker {self.host}:{self.port} unreachable (reconnecting)"
            ) from None
        assert self._wire is not None
        return self._wire

    def _fail_pending(self, exc: EVError) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody may be waiting any more

    # --- requests -----------------------------------------------------------------

    async def request(
        self, type_: str, data: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Reply:
        """Send one request and return its reply; ``erro`` raises its exception class."""
        limit = self.timeout if timeout is None else timeout
        wire = self._wire
        if wire is None or not self._connected.is_set():
            wire = await self._wait_connected(limit)
        if not wire.can_write.is_set():  # the kernel buffer is full: wait, within the limit
            try:
                async with asyncio.timeout(limit):
                    await wire.can_write.wait()
            except TimeoutError:
                raise RequestTimeout(f"could not send {type_} within {limit:g} s") from None
        return await self._exchange(wire, type_, data if data is not None else {}, limit)

    async def _exchange(self, wire: _Wire, type_: str, data: dict[str, Any], limit: float) -> Reply:
        """Write one request on ``wire`` and wait for its reply (``erro`` raises)."""
        transport = wire.transport
        if transport is None or transport.is_closing():
            raise BrokerUnreachable("connection to the broker was lost")
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        self._pending[rid] = fut
        wire.send(encode_request(type_, data, rid))
        timer = loop.call_later(limit, self._expire, rid, type_, limit)
        try:
            return await fut
        finally:
            timer.cancel()
            self._pending.pop(rid, None)

    def _expire(self, rid: int, type_: str, limit: float) -> None:
        fut = self._pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_exception(RequestTimeout(f"no reply to {type_} within {limit:g} s"))

    def _handle_line(self, line: bytes) -> None:
        try:
            msg = decode_reply(line)
        except Exception as exc:  # a peer that is not our broker; never crash the reader
            log.warning("undecodable line from broker (%s): %.200r", exc, line)
            return
        type_, data, rid = _fields(msg)
        if rid is None:
            if type_ == "erro" and self._pending:
                # an error the broker could not tie to an id (bad_json...): requests are
                # answered in order, so it belongs to the oldest request in flight
                oldest = next(iter(self._pending))
                self._resolve(self._pending.pop(oldest), type_, data)
            elif type_ == "erro":
                log.warning("error from broker: %s", data)
            else:
                self._dispatch_push(Push(type_, data if isinstance(data, dict) else {}))
            return
        fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
        if fut is None:
            log.debug("reply for unknown or expired request %r dropped", rid)
            return
        self._resolve(fut, type_, data)

    @staticmethod
    def _resolve(fut: asyncio.Future[Reply], type_: str, data: Any) -> None:
        if fut.done():
            return
        if type_ == "erro":
            info = data if isinstance(data, dict) else {}
            fut.set_exception(
                error_for_code(
                    str(info.get("code", "internal")),
                    str(info.get("message", "")),
                    info.get("field"),
                )
            )
        else:
            fut.set_result(Reply(type_, data))

    # --- pushes -------------------------------------------------------------------

    def subscribe(self, callback: PushCallback) -> Callable[[], None]:
        """Call ``callback(push)`` for every push; returns a function that unsubscribes.

        A callback may return a coroutine: it is run as a task.
        """
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def pushes(self, capacity: int = STREAM_CAPACITY) -> PushStream:
        """An async iterator over the pushes from now on (close it when done)."""
        stream = PushStream(capacity, self._streams.discard)
        if self._closed:
            stream.end()
        else:
            self._streams.add(stream)
        return stream

    def _dispatch_push(self, push: Push) -> None:
        if push.type not in PUSH_TYPES:
            log.debug("unknown push type %r delivered as is", push.type)
        for stream in list(self._streams):
            stream.offer(push)
        for callback in list(self._callbacks):
            try:
                result = callback(push)
            except Exception:
                log.exception("push callback failed")
                continue
            if asyncio.iscoroutine(result):
                task = asyncio.get_running_loop().create_task(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # --- typed methods ----------------------------------------------------------------

    def _base(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.vehicle_id:
            data["id_veiculo"] = self.vehicle_id
        if self.timestamps:
            data["timestamp"] = format_timestamp(time.time())
        return data

    async def bateria(
        self,
        nivel_bateria: float,
        latitude: float,
        longitude: float,
        *,
        distancia_max: float | None = None,
        limite: int | None = None,
        capacidade_kwh: float | None = None,
        nivel_carregar: float | None = None,
        ordenar: str | None = None,
    ) -> list[dict[str, Any]]:
        """Battery notification: the points nearest first (``pontos_disponiveis``); with
        ``capacidade_kwh`` and ``nivel_carregar`` each has ``custo_estimado``, and
        ``ordenar="custo"`` lists them cheapest first."""
        data = self._base()
        data["nivel_bateria"] = nivel_bateria
        _add_search(data, latitude, longitude, distancia_max, limite)
        _add_estimate(data, capacidade_kwh, nivel_carregar, ordenar)
        reply = await self.request("bateria", data)
        body = reply.data if isinstance(reply.data, dict) else {}
        points = body.get("pontos", [])
        return list(points) if isinstance(points, list) else []

    async def consulta_priced(
        self,
        latitude: float,
        longitude: float,
        nivel_bateria: float,
        capacidade_kwh: float,
        nivel_carregar: float,
        *,
        distancia_max: float | None = None,
        ordenar: str | None = None,
    ) -> list[dict[str, Any]]:
        """``consulta`` with ``custo_estimado`` per point (docs/tariffs.md)."""
        data = self._base()
        _add_search(data, latitude, longitude, distancia_max, None)
        data["nivel_bateria"] = nivel_bateria
        _add_estimate(data, capacidade_kwh, nivel_carregar, ordenar)
        reply = await self.request("consulta", data)
        return list(reply.data) if isinstance(reply.data, list) else []

    async def consulta(
        self,
        latitude: float,
        longitude: float,
        *,
        distancia_max: float | None = None,
        limite: int | None = None,
    ) -> list[dict[str, Any]]:
        """List points nearest first (``lista_pontos``)."""
        data = self._base()
        _add_search(data, latitude, longitude, distancia_max, limite)
        reply = await self.request("consulta", data)
        return list(reply.data) if isinstance(reply.data, list) else []

    async def reserva(self, point_id: str, tempo_estimado: float = 0) -> dict[str, Any]:
        """Reserve a place in ``point_id``'s queue; a refusal raises its RequestRefused."""
        data = self._base()
        data["id_ponto_recarga"] = point_id
        data["tempo_estimado"] = tempo_estimado
        return _checked(await self.request("reserva", data))

    async def cancelar(self, point_id: str) -> dict[str, Any]:
        data = self._base()
        data["id_ponto_recarga"] = point_id
        return _checked(await self.request("cancelar", data))

    async def chegada(
        self,
        point_id: str,
        nivel_bateria: float,
        nivel_carregar: float,
        metodo_pagamento: str,
        *,
        capacidade_kwh: float | None = None,
    ) -> dict[str, Any]:
        """Arrival: charging starts (``started``) or a refusal raises."""
        data = self._base()
        data["id_ponto_recarga"] = point_id
        data["nivel_bateria"] = nivel_bateria
        data["nivel_carregar"] = nivel_carregar
        data["metodo_pagamento"] = metodo_pagamento
        if capacidade_kwh is not None:
            data["capacidade_kwh"] = capacidade_kwh
        return _checked(await self.request("chegada", data))

    async def parar(self, point_id: str) -> dict[str, Any]:
        data = self._base()
        data["id_ponto_recarga"] = point_id
        return _checked(await self.request("parar", data))

    async def custos(self) -> dict[str, Any]:
        reply = await self.request("custos", self._base())
        return reply.data if isinstance(reply.data, dict) else {}

    async def status(self) -> dict[str, Any]:
        reply = await self.request("status", self._base())
        return reply.data if isinstance(reply.data, dict) else {}

    async def ping(self) -> float:
        """Round trip time in seconds."""
        start = time.perf_counter()
        await self.request("ping", {})
        return time.perf_counter() - start

    async def wait_push(self, *types: str, timeout: float | None = None) -> Push:
        """The next push of one of ``types`` (any type when none given)."""
        with self.pushes() as stream:
            while True:
                push = await stream.next(timeout)
                if not types or push.type in types:
                    return push

    async def iter_pushes(self) -> AsyncIterator[Push]:
        """Async generator over pushes (a convenience over :meth:`pushes`)."""
        with self.pushes() as stream:
            async for push in stream:
                yield push


def _add_estimate(
    data: dict[str, Any],
    capacidade_kwh: float | None,
    nivel_carregar: float | None,
    ordenar: str | None,
) -> None:
    if capacidade_kwh is not None and nivel_carregar is not None:
        data["capacidade_kwh"] = capacidade_kwh
        data["nivel_carregar"] = nivel_carregar
    if ordenar is not None:
        data["ordenar"] = ordenar


def _add_search(
    data: dict[str, Any],
    latitude: float,
    longitude: float,
    distancia_max: float | None,
    limite: int | None,
) -> None:
    """The position of a nearest-points search and its optional bounds, added to ``data``."""
    data["localizacao"] = {"latitude": latitude, "longitude": longitude}
    if distancia_max is not None:
        data["distancia_max"] = distancia_max
    if limite is not None:
        data["limite"] = limite


def _checked(reply: Reply) -> dict[str, Any]:
    """The reply data; a ``status: error`` becomes the RequestRefused of its code."""
    data = reply.data if isinstance(reply.data, dict) else {}
    if data.get("status") == "error":
        code = str(data.get("code", "refused"))
        message = str(data.get("message", ""))
        raise RefusedInvalid(message) if code == "invalid" else error_for_code(code, message)
    return data


def _fields(msg: dict[str, Any]) -> tuple[str, Any, Any]:
    """(type, data, id) of a decoded reply."""
    return str(msg.get("type", "")), msg.get("data"), msg.get("id")
