"""The pipelined push client against a real local HTTP/1.1 server (asyncio, port 0)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from broker.consumers.ocpi.http_out import Client, HttpError, Request

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


HANDLERS: set[asyncio.Task[None]] = set()


def answering(seen: list[bytes], close_after: int | None = None, chunked: bool = False) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        # (ignored below) the handler set holds tasks of any result
        HANDLERS.add(task)  # type: ignore[arg-type]
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                seen.append(body)
                served += 1
                if close_after is not None and served > close_after:
                    writer.close()
                    return
                out = b'{"status_code":1000,"n":' + body + b"}"
                if chunked:
                    half = len(out) // 2
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + f"{half:x}\r\n".encode() + out[:half] + b"\r\n"
                        + f"{len(out) - half:x}\r\n".encode() + out[half:] + b"\r\n0\r\n\r\n"
                    )  # fmt: skip
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(out)).encode()
                        + b"\r\n\r\n" + out
                    )  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return handle


async def shut(server: asyncio.Server) -> None:
    """Stop listening and wait for every connection handler to finish."""
    server.close()
    await server.wait_closed()
    done = [t for t in HANDLERS if t is not asyncio.current_task()]
    await asyncio.gather(*done, return_exceptions=True)
    HANDLERS.clear()


def batch(port: int, n: int) -> list[Request]:
    url = f"http://127.0.0.1:{port}/ocpi/2.2.1/locations/x"
    return [Request("PATCH", url, {"Authorization": "Token x"}, str(i).encode()) for i in range(n)]


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_pipelined_batch_is_answered_in_order(chunked: bool) -> None:
    async def main() -> None:
        seen: list[bytes] = []
        server, port = await serve(answering(seen, chunked=chunked))
        client = Client(timeout=5)
        try:
            out = await client.send(batch(port, 20))
            assert [r.status for r in out] == [200] * 20
            assert [r.body for r in out] == [b'{"status_code":1000,"n":%d}' % i for i in range(20)]
            again = await client.send(batch(port, 3))  # the connection is kept
            assert len(again) == 3 and seen == [str(i).encode() for i in [*range(20), 0, 1, 2]]
        finally:
            await client.close()
            await shut(server)

    asyncio.run(main())


def test_a_connection_cut_mid_batch_gives_the_answered_prefix() -> None:
    async def main() -> None:
        seen: list[bytes] = []
        server, port = await serve(answering(seen, close_after=4))
        client = Client(timeout=5)
        try:
            out = await client.send(batch(port, 10))
            assert len(out) == 4
            await shut(server)
            with pytest.raises(HttpError):  # nothing listens any more
                await client.send(batch(port, 1))
        finally:
            await client.close()

    asyncio.run(main())


def test_refused_connection_and_bad_urls_are_http_errors() -> None:
    async def main() -> None:
        client = Client(timeout=2)
        server, port = await serve(answering([]))
        await shut(server)
        with pytest.raises(HttpError):
            await client.send(batch(port, 1))
        with pytest.raises(HttpError):
            await client.send([Request("GET", "ftp://x/y", {}, None)])
        await client.close()

    asyncio.run(main())
