"""vehicle.pushes: the bounded push stream (no sockets needed)."""

from __future__ import annotations

import asyncio

import pytest

from common.errors import RequestTimeout, TransportError
from vehicle.pushes import Push, PushStream


def test_stream_delivers_in_order_drops_oldest_and_ends() -> None:
    async def body() -> None:
        closed: list[PushStream] = []
        stream = PushStream(capacity=2, on_close=closed.append)
        for n in range(3):
            stream.offer(Push("sua_vez", {"n": n}))
        assert stream.dropped == 1
        assert [(await stream.next(1)).data["n"] for _ in range(2)] == [1, 2]
        with pytest.raises(RequestTimeout):
            await stream.next(0.05)
        waiter = asyncio.ensure_future(stream.next(1))
        await asyncio.sleep(0)
        stream.offer(Push("custo_final", {"n": 9}))
        assert (await waiter).type == "custo_final"
        stream.close()
        assert closed == [stream]
        stream.offer(Push("sua_vez", {}))  # ignored once ended
        with pytest.raises(TransportError):
            await stream.next(1)
        assert [p async for p in stream] == []

    asyncio.run(body())


def test_async_for_stops_at_the_end() -> None:
    async def body() -> list[str]:
        stream = PushStream()
        stream.offer(Push("a", {}))
        stream.offer(Push("b", {}))
        stream.end()
        return [p.type async for p in stream]

    assert asyncio.run(body()) == ["a", "b"]
