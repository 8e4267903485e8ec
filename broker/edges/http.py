"""The operators edge: a tiny HTTP/1.1 server (no framework) for /metrics and /healthz.

Only ``GET`` (and ``HEAD``) of registered paths are served; anything else gets
404 or 405. Requests are parsed up to the blank line (no bodies are
accepted); keep-alive is honoured.

Limits (security contract, "Limits"): at most ``max_connections`` open
connections (more are closed at once); a request head larger than
``max_head`` gets 431 and the connection is closed; a malformed head gets 400
and is closed. One request at a time per connection: the next pipelined
request is read only once the previous response has been fully handed to the
kernel, so a client that never reads holds at most one response in memory,
and is closed after ``idle_s`` without progress. A handler that fails answers
500; a page that is not ready answers 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, cast

log = logging.getLogger(__name__)

MAX_HEAD: Final = 8 * 1024
IDLE_S: Final = 30.0
MAX_CONNECTIONS: Final = 64
REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

#: handler() -> (status, content type, body)
Handler = Callable[[], tuple[int, str, bytes]]
#: called with a reason each time the edge refuses or closes a client
OnReject = Callable[[str], None]


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
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self._writing = False  # a response is still in the transport's buffer
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.server.live) >= self.server.max_connections:
            self.server.on_reject("connection_cap")
            self.transport.abort()
            self.transport = None
            return
        self.server.live.add(self)
        # pause_writing as soon as anything is unsent: one response in flight at a time
        self.transport.set_write_buffer_limits(0, 0)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.live.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.server.idle_s, self._idle)

    def _idle(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.server.on_reject("idle")
            self.transport.abort()

    def pause_writing(self) -> None:
        self._writing = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing = False
        if self.transport is not None and not self.transport.is_closing():
            self._arm()
            self.transport.resume_reading()
            self._serve_buffered()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._arm()
        self._serve_buffered()

    def _serve_buffered(self) -> None:
        while self.transport is not None and not self._writing:
            end = self.buf.find(b"\r\n\r\n")
            limit = self.server.max_head
            if end < 0 or end > limit:
                if len(self.buf) > limit or end > limit:
                    self.server.on_reject("head_too_large")
                    body = b"request head too large\n"
                    self._send(431, body, close=True, head=False)
                return
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            self._answer(head)
        if self._writing and len(self.buf) > 4 * self.server.max_head:
            # pipelining far ahead of reading the answers: abusive, close
            self.server.on_reject("pipelined")
            if self.transport is not None:
                self.transport.abort()

    def _answer(self, head: bytes) -> None:
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError(version)
        except ValueError:
            self.server.on_reject("bad_request")
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
        handler = self.server.routes.get(path)
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
                status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
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

    def __init__(
        self,
        routes: dict[str, Handler],
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_head: int = MAX_HEAD,
        idle_s: float = IDLE_S,
        on_reject: OnReject | None = None,
    ) -> None:
        self.routes = routes
        self.max_connections = max_connections
        self.max_head = max_head
        self.idle_s = idle_s
        self.on_reject: OnReject = on_reject or (lambda _reason: None)
        self.live: set[HttpConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host, port, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.live):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()
            self._server = None
