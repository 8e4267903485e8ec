"""The web console's token gate: an ASGI wrapper in front of the whole application.

Every path but ``/healthz`` needs the token, given as ``Authorization: Bearer
T`` or as the ``ev_token`` cookie. A ``GET`` with ``?token=T`` (the URL the
console prints at start) sets that cookie and redirects to the same path
without the token, so it does not stay in the address bar or in history.
A missing or wrong token gets ``401`` with a fixed body: the gate runs before
routing, so it reveals neither which paths exist nor why the token failed.
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE: Final = "ev_token"
OPEN_PATHS: Final = frozenset({"/healthz"})
TOKEN_BYTES: Final = 24
UNAUTHORIZED: Final = b'{"error":"unauthorized"}'


def new_token() -> str:
    """A random token (URL-safe, 32 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers") or []}


def token_of(scope: Scope) -> str | None:
    """The token the request carries (bearer header first, then the cookie)."""
    headers = _headers(scope)
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    raw = headers.get(b"cookie")
    if raw:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw.decode("latin-1"))
        except CookieError:
            return None
        if COOKIE in jar:
            return jar[COOKIE].value
    return None


class TokenGate:
    """Wraps an ASGI app; only requests with the token reach it."""

    def __init__(
        self,
        app: Any,
        token: str,
        on_authenticated: Callable[[tuple[str, int] | None], None] | None = None,
    ) -> None:
        if not token:
            raise ValueError("the web console needs a non-empty token")
        self.app: ASGIApp = app
        self.token = token
        #: told the ``client`` of each connection that shows the token (the guard)
        self.on_authenticated = on_authenticated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        url_token = next((v for k, v in query if k == "token"), None)
        if url_token is not None and scope["type"] == "http":
            if not _same(url_token, self.token):
                await _deny(send)
                return
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            self._authenticated(scope)
            secure = scope.get("scheme") in ("https", "wss")
            await _redirect(send, path + (f"?{rest}" if rest else ""), self.token, secure)
            return
        given = token_of(scope)
        if given is None or not _same(given, self.token):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4401})
            else:
                await _deny(send)
            return
        self._authenticated(scope)
        await self.app(scope, receive, send)

    def _authenticated(self, scope: Scope) -> None:
        if self.on_authenticated is not None:
            client = scope.get("client")
            self.on_authenticated(tuple(client) if client else None)


async def _deny(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(UNAUTHORIZED)).encode()),
                (b"www-authenticate", b"Bearer"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": UNAUTHORIZED})


async def _redirect(send: Send, location: str, token: str, secure: bool = False) -> None:
    # Secure when the console is served over TLS: the cookie then never goes in clear
    cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", (location or "/").encode("latin-1")),
                (b"set-cookie", cookie.encode("latin-1")),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})
