"""The history edge: a ZeroMQ ROUTER answering replay and snapshot requests.

Requests and replies are one msgpack frame each (protocol section 5):

* ``{"op": "since", "seq": N, "limit": L}`` -> ``{"events": [payload...],
  "last_seq": S, "more": bool}``: the events whose seq > N, in order, at most
  L of them (default 1000; larger limits are clamped to 1000, and to
  ``--history-max-events``); a reply is also cut before it passes
  ``--history-max-bytes`` (4 MiB). ``more`` is true when events were left out.
  L of them (default 1000; larger limits are clamped to 1000).
  When events right after N were pruned (``--retain-events``):
  ``{"error": "pruned", "first_seq": F}`` (F = oldest event held).
* ``{"op": "snapshot"}`` -> the snapshot ``{"seq", "points", "queues",
  "sessions"}``, consistent as of event ``seq`` (the Clone pattern).
* ``{"op": "accounts"}`` (extension, for billing reconciliation) ->
  ``{"accounts": {vehicle_id: {...}}}``.
* ``{"op": "set_availability", "point_id": P, "available": bool, "reason": R}``
  -> ``{"ok": true, "seq": S}`` once the change is committed, or ``{"error"}``
  (rules.md "Out of service"; operator credentials only).
* ``{"op": "sites"}`` -> ``{"sites": [...], "seq": S}``: every site with its
  limit, points and allocation (energy.md).
* ``{"op": "set_site", "name": N, "limit_kw": KW, "points": [PATTERN...],
  "min_kw": KW?}`` and ``{"op": "remove_site", "name": N}`` -> ``{"ok": true,
  "seq": S}`` once committed, or ``{"error"}`` naming the problem (operator
  credentials only).
* anything else -> ``{"error": "..."}``.

Both DEALER and REQ clients work: a REQ envelope ``[id, b"", request]`` is
answered ``[id, b"", reply]`` and a DEALER one ``[id, request]`` is answered
``[id, reply]``. The callbacks run on the event loop and must be quick.

With ``security`` the ROUTER is a CURVE server admitting live ``consumer``
and ``operator`` credentials (ZAP domain ``consumers``); each request is
checked again against the credential its connection authenticated with, so a
revoked credential is refused (``{"error": "forbidden: ..."}``) within a
second, and ops in :data:`OPERATOR_OPS` need the ``operator`` role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

import msgspec
import zmq
import zmq.asyncio

from broker.auth import CONSUMERS_DOMAIN, Security
from broker.edges.zmq_sockets import (
    bind_socket,
    bound_endpoint,
    count_handshake_failures,
    receive_loop,
    user_id_of,
)
from common.codec import decode_history_request, pack, unpack
from common.errors import EventsPruned, EVError, Forbidden, InternalError, InvalidRequest
from common.messages import (
    HISTORY_OPS,
    MAX_HISTORY_LIMIT,
    BusEvent,
    HistoryAccounts,
    HistoryRemoveSite,
    HistoryRequest,
    HistorySetAvailability,
    HistorySetSite,
    HistorySince,
    HistorySites,
    HistorySnapshot,
    HistoryTariffs,
)
from common.zmq_nowait import send_nowait

log = logging.getLogger(__name__)

#: Largest request frame accepted; a peer sending more is disconnected by libzmq.
MAX_REQUEST_FRAME: Final = 64 * 1024
#: Replies queued per client before the ROUTER drops replies to it.
HISTORY_SNDHWM: Final = 1000
#: The op answered with every account.
ACCOUNTS_OP: Final = "accounts"
#: The operator op (rules.md "Out of service"); the ROUTER's credential check admits
#: only ``operator`` credentials to it when security is on.
SET_AVAILABILITY_OP: Final = "set_availability"
TARIFFS_OP: Final = "tariffs"
KNOWN_OPS: Final = HISTORY_OPS
MAX_POINT_ID: Final = 64
ANONYMOUS: Final = "anonymous"  # who changed availability when no credential is in use
#: Ops only an ``operator`` credential may ask for.
OPERATOR_OPS: Final = frozenset({SET_AVAILABILITY_OP, "set_site", "remove_site", TARIFFS_OP})
#: The decoded requests only an ``operator`` credential may make (the check's input).
OPERATOR_REQUESTS: Final = (
    HistorySetAvailability,
    HistorySetSite,
    HistoryRemoveSite,
    HistoryTariffs,
)

EventsSince = Callable[[int, int], tuple[list[BusEvent], int, bool]]
#: (point_id, available, reason, by) -> the reply map, once the change is committed
SetAvailability = Callable[[str, bool, str, str], int]  # the seq after it; raises EVError
#: (sites request, by) -> the reply map, once a change is committed (energy.md); raises
#: EVError (a refusal names the problem)
SitesOp = Callable[[HistorySites | HistorySetSite | HistoryRemoveSite, str], dict[str, Any]]
#: (tariffs request, by) -> the reply map, once a change is committed (docs/tariffs.md)
Tariffs = Callable[[HistoryTariffs, str], dict[str, Any]]


class HistoryServer:
    """ROUTER socket serving event history, snapshots and accounts."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        *,
        events_since: EventsSince,
        snapshot: Callable[[], dict[str, Any]],
        accounts: Callable[[], dict[str, Any]],
        max_events: int = MAX_HISTORY_LIMIT,
        max_bytes: int = 4 * 1024 * 1024,
        security: Security | None = None,
        set_availability: SetAvailability | None = None,
        sites: SitesOp | None = None,
        tariffs: Tariffs | None = None,
    ) -> None:
        self._set_availability = set_availability
        self._sites = sites
        self._tariffs = tariffs
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._ctx = ctx
        self._security = security
        self._endpoint = endpoint
        self._events_since = events_since
        self._snapshot = snapshot
        self._accounts = accounts
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.stats: dict[str, int] = {"requests": 0, "errors": 0, "dropped": 0, "rejected": 0}

    @property
    def endpoint(self) -> str:
        """The bound endpoint (with the real port when bound to a wildcard)."""
        return bound_endpoint(self._sock, self._endpoint)

    async def start(self) -> None:
        """Bind the ROUTER and start serving; TransportError when it cannot be bound."""
        if self._sock is not None:
            raise RuntimeError("HistoryServer already started")
        options: dict[int, int | bytes] = {
            zmq.LINGER: 0,
            zmq.MAXMSGSIZE: MAX_REQUEST_FRAME,
            zmq.SNDHWM: HISTORY_SNDHWM,
        }
        if self._security is not None:
            options.update(self._security.server_options(CONSUMERS_DOMAIN))
        sock = bind_socket(self._ctx, zmq.ROUTER, self._endpoint, "the history ROUTER", options)
        self._sock = sock
        self._task = asyncio.create_task(self._serve(sock), name="history-serve")
        if self._security is not None:
            self._monitor = asyncio.create_task(
                count_handshake_failures(sock, "consumers", self._security.reject),
                name="history-handshakes",
            )
        log.info("history ROUTER bound on %s", self.endpoint)

    async def close(self) -> None:
        """Stop serving and close the socket. Safe to call twice."""
        for task in (self._task, self._monitor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._monitor = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def _serve(self, sock: zmq.asyncio.Socket) -> None:
        # one request a loop turn (batch 1): a page of history is costly enough
        if self._security is None:
            await receive_loop(sock, lambda frames: self._request(sock, frames), "history ROUTER")
        else:  # frames uncopied, to read the credential of the connection

            def secured(received: list[zmq.Frame]) -> None:
                user = user_id_of(received[-1])
                self._request(sock, [f.bytes for f in received], user, checked=True)

            await receive_loop(sock, secured, "history ROUTER", copy=False)

    def _request(
        self,
        sock: zmq.asyncio.Socket,
        frames: list[bytes],
        user: str | None = None,
        checked: bool = False,
    ) -> None:
        """Answer one request ``frames`` from credential ``user`` (``checked``: secured)."""
        envelope, body = split_envelope(frames)
        if len(body) != 1:
            reply = error_reply(InvalidRequest(f"expected one request frame, got {len(body)}"))
        else:
            reply = self._checked_answer(body[0], user) if checked else self.answer(body[0], user)
        self.stats["requests"] += 1
        if "error" in reply:
            self.stats["errors"] += 1
        self._send(sock, [*envelope, pack(reply)])

    def _checked_answer(self, frame: bytes, user: str | None) -> dict[str, Any]:
        """The reply to ``frame`` from credential ``user`` on a secured ROUTER.

        The frame is decoded once, into its typed request, and the role check runs on
        that request: a frame that does not decode (unknown or extra fields, a bad
        msgpack extension) is refused before anything runs, whatever its ``op`` says.
        """
        assert self._security is not None
        try:
            cred = self._security.keyring.consumer(user)
            if cred is None:
                self.stats["rejected"] += 1
                self._security.reject("history", "credential_revoked", repr(user))
                raise Forbidden("forbidden: credential revoked")
            request = self._decode(frame)
            if isinstance(request, OPERATOR_REQUESTS) and cred.role != "operator":
                self.stats["rejected"] += 1
                op = TARIFFS_OP if isinstance(request, HistoryTariffs) else SET_AVAILABILITY_OP
                self._security.reject("history", "not_operator", f"{cred.name!r} asked {op!r}")
                raise Forbidden(f"forbidden: {op} needs an operator credential")
        except EVError as exc:
            return error_reply(exc)
        return self.answer_request(request, user)

    def _decode(self, frame: bytes) -> HistoryRequest:
        """The typed request; InvalidRequest (or InternalError) when ``frame`` does not decode."""
        try:
            return decode_history_request(frame)
        except InvalidRequest as exc:
            raise InvalidRequest(_describe(exc, _op_of(frame))) from None  # op for wording only
        except Exception as exc:  # a decoder bug must not become an open door
            log.exception("history request could not be decoded")
            raise InternalError(f"internal error: {type(exc).__name__}") from None

    def answer(self, frame: bytes, user: str | None = None) -> dict[str, Any]:
        """The reply map for one request frame from credential ``user`` (never raises)."""
        try:
            request = self._decode(frame)
        except EVError as exc:
            return error_reply(exc)
        return self.answer_request(request, user)

    def answer_request(self, request: HistoryRequest, user: str | None = None) -> dict[str, Any]:
        """The reply map for one decoded request (never raises)."""
        try:
            if isinstance(request, HistoryAccounts):
                return {"accounts": self._accounts()}
            if isinstance(request, HistorySetAvailability):
                return {"ok": True, "seq": self._availability(request, user or ANONYMOUS)}
            if isinstance(request, HistorySites | HistorySetSite | HistoryRemoveSite):
                if self._sites is None:
                    raise InvalidRequest("sites are not served here")
                return self._sites(request, user or ANONYMOUS)
            if isinstance(request, HistoryTariffs):
                if self._tariffs is None:
                    raise InvalidRequest(f"{TARIFFS_OP} is not served here")
                return self._tariffs(request, user or ANONYMOUS)
            if isinstance(request, HistorySince):
                limit = min(request.limit, MAX_HISTORY_LIMIT, self.max_events)
                events, last_seq, more = self._events_since(request.seq, limit)
                encoded, cut = self._within_bytes(events)
                return {"events": encoded, "last_seq": last_seq, "more": more or cut}
            if isinstance(request, HistorySnapshot):
                return self._snapshot()
            raise InvalidRequest(f"unsupported request {type(request).__name__}")
        except EVError as exc:
            return error_reply(exc)
        except Exception as exc:
            log.exception("history request failed")
            return error_reply(InternalError(f"internal error: {type(exc).__name__}"))

    def _availability(self, request: HistorySetAvailability, by: str) -> int:
        """``{"op":"set_availability","point_id":P,"available":bool,"reason":str}``."""
        if self._set_availability is None:
            raise InvalidRequest(f"{SET_AVAILABILITY_OP} is not served here")
        point_id, available, reason = request.point_id, request.available, request.reason
        if not isinstance(point_id, str) or not 1 <= len(point_id) <= MAX_POINT_ID:
            raise InvalidRequest(
                f"point_id: a string of 1-{MAX_POINT_ID} characters is required", field="point_id"
            )
        if not isinstance(available, bool):
            raise InvalidRequest("available: true or false is required", field="available")
        if not isinstance(reason, str):
            raise InvalidRequest("reason: must be a string", field="reason")
        return self._set_availability(point_id, available, reason, by)

    def _within_bytes(self, events: list[BusEvent]) -> tuple[list[msgspec.Raw], bool]:
        """The events, each packed once, cut where the reply would pass ``max_bytes``.

        At least one event is always returned, so a reader always makes progress.
        """
        out: list[msgspec.Raw] = []
        size = 64  # the reply map around the events
        for event in events:
            raw = pack(event)
            size += len(raw)
            if out and size > self.max_bytes:
                return out, True
            out.append(msgspec.Raw(raw))
        return out, False

    def _send(self, sock: zmq.asyncio.Socket, frames: list[bytes]) -> None:
        exc = send_nowait(sock, frames)
        if exc is not None:
            self.stats["dropped"] += 1
            log.warning("history reply dropped: %r", exc)


def error_reply(exc: EVError) -> dict[str, Any]:
    """The one wire form of a refused history request: ``{"error": message}``, or
    ``{"error": "pruned", "first_seq": F}`` for :class:`common.errors.EventsPruned`."""
    if isinstance(exc, EventsPruned):
        return {"error": exc.code, "first_seq": exc.first_seq}
    return {"error": exc.message}


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """``(envelope, body)``: envelope is ``[id]`` (DEALER) or ``[id, b""]`` (REQ)."""
    if len(frames) >= 3 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


def _describe(exc: InvalidRequest, op: Any) -> str:
    """A one-line reason naming the offending field (and every known op when ``op`` is wrong)."""
    if exc.field == "op" and isinstance(op, str):
        return f"unknown op {op!r}; known ops: {', '.join(KNOWN_OPS)}"
    if exc.field and exc.field != "request" and exc.field not in exc.message:
        return f"{exc.field}: {exc.message}"
    return exc.message


def _op_of(frame: bytes) -> Any:
    """The ``op`` of a request map, or None when the frame is not one."""
    try:
        obj = unpack(frame)
    except Exception:
        return None
    return obj.get("op") if isinstance(obj, dict) else None
