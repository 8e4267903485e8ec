"""A small HTTP/1.1 client for pushes: kept-alive connections, pipelined, order kept.

A push queue to one eMSP is strictly ordered, so one request at a time would
cap it at one round trip per push. HTTP/1.1 pipelining keeps the order and
removes the wait: up to ``depth`` requests are written at once on one
connection and their responses read back in the same order (RFC 9112 §9.3.2).
``depth`` 1 is plain request/response, for servers that mishandle pipelining.
Plain http and https (the system's default TLS context) are supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

MAX_HEAD: Final = 64 * 1024
MAX_BODY: Final = 4 * 1024 * 1024


class HttpError(Exception):
    """The connection failed or the peer did not speak HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


def origin(url: str) -> tuple[str, str, int]:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise HttpError(f"not an http(s) URL: {url!r}")
    return u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80)


def _encode(req: Request, host: str) -> bytes:
    u = urlsplit(req.url)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    body = req.body or b""
    lines = [f"{req.method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in req.headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()

    async def _response(self) -> tuple[Response, bool]:
        """One response; True when the server will close the connection after it."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise HttpError("response head too large") from exc
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP/1.1 response: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        close = headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._chunked()
        elif "content-length" in headers:
            n = int(headers["content-length"])
            if n > MAX_BODY:
                raise HttpError("response body too large")
            body = await self.reader.readexactly(n)
        elif close:
            body = await self.reader.read(MAX_BODY)
        else:
            body = b""
        return Response(int(parts[1]), body), close

    async def _chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return bytes(out)
            out += await self.reader.readexactly(size)
            await self.reader.readexactly(2)
            if len(out) > MAX_BODY:
                raise HttpError("response body too large")


class Client:
    """One kept-alive connection per origin; :meth:`send` pipelines a batch in order."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._conns: dict[tuple[str, str, int], Connection] = {}
        self._tls: ssl.SSLContext | None = None

    async def _conn(self, key: tuple[str, str, int]) -> Connection:
        conn = self._conns.get(key)
        if conn is not None and not conn.closed:
            return conn
        scheme, host, port = key
        tls = None
        if scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls, limit=MAX_HEAD), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise HttpError(f"cannot connect to {host}:{port}: {exc}") from exc
        conn = self._conns[key] = Connection(reader, writer)
        return conn

    async def send(self, batch: Sequence[Request]) -> list[Response]:
        """Responses to a prefix of ``batch`` (all of it unless the connection failed:
        then the responses read before the failure, and :class:`HttpError` if none)."""
        if not batch:
            return []
        key = origin(batch[0].url)
        if any(origin(r.url) != key for r in batch):
            raise HttpError("one batch, one origin")
        conn = await self._conn(key)
        host = key[1] if key[2] in (80, 443) else f"{key[1]}:{key[2]}"
        out: list[Response] = []
        try:
            conn.writer.write(b"".join(_encode(r, host) for r in batch))
            async with asyncio.timeout(self.timeout):
                await conn.writer.drain()
                for _ in batch:
                    resp, close = await conn._response()
                    out.append(resp)
                    if close:
                        conn.close()
                        break
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, HttpError) as exc:
            conn.close()
            if not out:
                raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        return out

    async def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()
        self._conns.clear()
