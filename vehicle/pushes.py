"""Pushes from the broker (lines without ``id``) and the bounded stream that delivers them.

A :class:`PushStream` is an async iterator over the pushes received from the
moment it was opened. Its buffer is bounded: when a slow reader lets it fill
up, the oldest push is dropped and counted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from common.errors import RequestTimeout, TransportError

STREAM_CAPACITY: Final = 1000


@dataclass(frozen=True, slots=True)
class Push:
    """An unsolicited message from the broker (no ``id``)."""

    type: str
    data: dict[str, Any]


PushCallback = Callable[[Push], object]
_END: Final = object()


class PushStream:
    """Async iterator over pushes, from the moment it was opened until closed.

    The buffer is bounded; when a slow reader lets it fill up, the oldest push
    is dropped and :attr:`dropped` counts it.
    """

    def __init__(
        self, capacity: int = STREAM_CAPACITY, on_close: Callable[[PushStream], None] | None = None
    ) -> None:
        self._on_close = on_close
        self._items: deque[object] = deque()
        self._capacity = capacity
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self.dropped = 0

    def offer(self, push: Push) -> None:
        """Deliver one push (called by the client)."""
        self._offer(push)

    def _offer(self, item: object) -> None:
        if self._ended:
            return
        if item is _END:
            self._ended = True
        elif len(self._items) >= self._capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> PushStream:
        return self

    async def __anext__(self) -> Push:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if item is _END:
            self._items.appendleft(item)
            raise StopAsyncIteration
        assert isinstance(item, Push)
        return item

    async def next(self, timeout: float | None = None) -> Push:
        """The next push; RequestTimeout after ``timeout`` s, TransportError once closed."""
        try:
            async with asyncio.timeout(timeout):
                return await self.__anext__()
        except StopAsyncIteration:
            raise TransportError("push stream closed") from None
        except TimeoutError:
            raise RequestTimeout(f"no push within {timeout:g} s") from None

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close(self)
        self._offer(_END)

    def end(self) -> None:
        """End the stream from the producer's side (the client closed)."""
        self._offer(_END)

    def __enter__(self) -> PushStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
