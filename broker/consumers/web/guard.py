"""The web console's browser and connection rules (security contract, second round).

Two pieces, both in front of the token gate (:mod:`broker.consumers.web.auth`):

* :class:`BrowserRules`, an ASGI wrapper: every response carries
  ``Content-Security-Policy`` (scripts and styles from the console's own origin
  only, no inline script; ``frame-ancestors 'none'``), ``X-Content-Type-Options:
  nosniff``, ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``. A
  state-changing request (any method but GET, HEAD, OPTIONS) must be
  ``application/json`` and come from the console's own origin (``Origin`` equal
  to ``<scheme>://<Host>``, or listed with ``--allowed-origin``); otherwise
  ``403``. A request without ``Origin`` is accepted only with the token in an
  ``Authorization`` header (a program, not a browser: a page of another site
  cannot set that header), never on the cookie alone.
* :class:`ConnectionGuard` and :func:`guarded_protocol`: uvicorn's h11 protocol,
  with a deadline for each request head (:data:`HEAD_DEADLINE_S`, from the
  connection's start or the end of the previous response) and at most
  :data:`MAX_UNAUTHENTICATED` connections per address that have not yet shown
  the token (the token gate tells the guard when one does). A slow or idle
  client of one address thus holds at most a few of the console's 64 slots,
  and never for long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from uvicorn.protocols.http.h11_impl import H11Protocol

from broker.consumers.web.auth import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

HEAD_DEADLINE_S: Final = 10.0
MAX_UNAUTHENTICATED: Final = 8
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
FORBIDDEN: Final = b'{"error":"forbidden"}'
#: Tiles are images from the configured tile server: any https image may load.
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
LOG_EVERY_S: Final = 1.0


class BrowserRules:
    """Security headers on every response; JSON and same-origin for state changes."""

    def __init__(self, app: ASGIApp, allowed_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.allowed = frozenset(o.strip().rstrip("/").lower() for o in allowed_origins if o)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers") or []}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*(message.get("headers") or []), *extra]}
            await send(message)

        if scope.get("method", "GET") not in SAFE_METHODS:
            refusal = self.refusal(scope)
            if refusal is not None:
                log.debug("web console refused %s %s: %s", scope["method"], scope["path"], refusal)
                await _forbidden(with_headers)
                return
        await self.app(scope, receive, with_headers)

    def refusal(self, scope: Scope) -> str | None:
        """Why a state-changing request is refused, or None."""
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip()
        if ctype.lower() != "application/json":
            return f"content type {ctype!r}, not application/json"
        origin = headers.get(b"origin")
        if origin is None:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if auth.lower().startswith("bearer "):
                return None  # a program with the token in a header: no browser, no CSRF
            return "no Origin (and the token not in an Authorization header)"
        given = origin.decode("latin-1").strip().rstrip("/").lower()
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        own = f"{scope.get('scheme', 'http')}://{host}"
        if given == own or given in self.allowed:
            return None
        return f"Origin {given!r} is not {own!r} nor allowed"


async def _forbidden(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(FORBIDDEN)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": FORBIDDEN})


class ConnectionGuard:
    """Which open connections have not shown the token yet, by address."""

    def __init__(self, max_unauthenticated: int = MAX_UNAUTHENTICATED) -> None:
        self.max_unauthenticated = max_unauthenticated
        self._pending: dict[str, set[int]] = {}  # address -> client ports not yet authenticated
        self.refused = 0
        self.late = 0
        self._last_log = 0.0

    def admit(self, address: str, port: int) -> bool:
        """A new connection from ``address``: False when that address already has the
        maximum of unauthenticated connections (then it is closed at once)."""
        waiting = self._pending.setdefault(address, set())
        if len(waiting) >= self.max_unauthenticated:
            self.refused += 1
            self._log(f"{address}: more than {self.max_unauthenticated} connections without token")
            return False
        waiting.add(port)
        return True

    def authenticated(self, client: tuple[str, int] | None) -> None:
        """The connection ``client`` showed the token: it no longer counts."""
        if client is None:
            return
        self._forget(client[0], client[1])

    def closed(self, address: str, port: int) -> None:
        self._forget(address, port)

    def head_late(self, address: str) -> None:
        self.late += 1
        self._log(f"{address}: no request head within {HEAD_DEADLINE_S:g} s, closed")

    def _forget(self, address: str, port: int) -> None:
        waiting = self._pending.get(address)
        if waiting is not None:
            waiting.discard(port)
            if not waiting:
                del self._pending[address]

    def _log(self, line: str) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning("web console: %s", line)


def guarded_protocol(guard: ConnectionGuard) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the head deadline and the per-address cap."""

    class GuardedH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _peer: tuple[str, int] | None = None
        _armed_for: object = None  # the request cycle current when the timer was armed

        # (ignored below) asyncio types it BaseTransport; this protocol runs on TCP only
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and len(peer) >= 2:
                self._peer = (str(peer[0]), int(peer[1]))
                if not guard.admit(*self._peer):
                    self._peer = None
                    transport.close()
                    return
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            if self._peer is not None:
                guard.closed(*self._peer)
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not self._armed_for:  # a request head arrived
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            before = self.cycle
            super().on_response_complete()
            if not self.transport.is_closing() and self.cycle is before:
                self._arm_head_timer()  # the next request's head has its deadline too

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._armed_for = self.cycle
            self._head_timer = self.loop.call_later(HEAD_DEADLINE_S, self._head_late)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self.cycle is self._armed_for and not self.transport.is_closing():
                guard.head_late(self._peer[0] if self._peer else "?")
                self.transport.close()

    return GuardedH11
