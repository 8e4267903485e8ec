"""The operators edge: a tiny HTTP/1.1 server (no framework) for /metrics and /healthz.

Only ``GET`` (and ``HEAD``) of registered paths are served; anything else gets
404 or 405. Requests are parsed up to the blank line (no bodies are
accepted); keep-alive is honoured, and a request head larger than 16 KiB or
malformed gets 400 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, cast

log = logging.getLogger(__name__)

MAX_HEAD: Final = 16 * 1024
REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}

#: handler() -> (status, content type, body)
Handler = Callable[[], tuple[int, str, bytes]]


def response(status: int, content_type: str, body: bytes, *, close: bool, head: bool) -> bytes:
    reason = REASONS.get(status, "OK")
    headers = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return headers.encode("ascii") + (b"" if head else body)


class HttpConnection(asyncio.Protocol):
    def __init__(self, routes: dict[str, Handler], live: set[HttpConnection]) -> None:
        self.routes = routes
        self.live = live
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.live.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._send(400, b"request head too large\n", close=True, head=False)
                return
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            self._answer(head)

    def _answer(self, head: bytes) -> None:
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError(version)
        except ValueError:
            self._send(400, b"bad request\n", close=True, head=False)
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        close = headers.get("connection") == "close" or (
            version == "HTTP/1.0" and headers.get("connection") != "keep-alive"
        )
        if "content-length" in headers or "transfer-encoding" in headers:
            close = True  # no bodies accepted: do not try to skip one
        path = target.split("?", 1)[0]
        handler = self.routes.get(path)
        is_head = method == "HEAD"
        if handler is None:
            self._send(404, b"not found\n", close=close, head=is_head)
        elif method not in ("GET", "HEAD"):
            self._send(405, b"method not allowed\n", close=close, head=is_head, allow=True)
        else:
            try:
                status, ctype, body = handler()
            except Exception:
                log.exception("HTTP handler for %s failed", path)
                status, ctype, body = 500, "text/plain", b"internal error\n"
            self.transport_write(response(status, ctype, body, close=close, head=is_head), close)

    def _send(
        self, status: int, body: bytes, *, close: bool, head: bool, allow: bool = False
    ) -> None:
        data = response(status, "text/plain; charset=utf-8", body, close=close, head=head)
        if allow:
            data = data.replace(b"\r\n\r\n", b"\r\nAllow: GET, HEAD\r\n\r\n", 1)
        self.transport_write(data, close)

    def transport_write(self, data: bytes, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if close:
            self.transport.close()
            self.transport = None


class HttpServer:
    """Serves ``routes`` (path -> handler) on one TCP port."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self._server: asyncio.Server | None = None
        self._live: set[HttpConnection] = set()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self.routes, self._live), host, port, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._live):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()
            self._server = None
