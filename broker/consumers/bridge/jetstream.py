"""What the bridge and the JetStream billing source share: names, the stream, connections.

Subjects are ``evcharge.<region>.<topic>`` and every message carries the header
``Nats-Msg-Id: <region>:<seq>`` (JetStream drops a second message with the same
id inside the stream's duplicate window). The payload is the bus event exactly
as the broker publishes it (the msgpack map of the second ZeroMQ frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Protocol

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from broker.consumers.bridge.subjects import (
    DEFAULT_STREAM,
    MSG_ID,
    SUBJECT_ROOT,
    check_nats_url,
    check_region,
    check_stream,
    msg_id,
    parse_msg_id,
    parse_regions,
    region_filter,
    split_subject,
    subject,
)
from common.errors import ConfigError, TransportError

__all__ = [
    "DEFAULT_STREAM",
    "MSG_ID",
    "SUBJECT_ROOT",
    "check_nats_url",
    "check_region",
    "check_stream",
    "msg_id",
    "parse_msg_id",
    "parse_regions",
    "region_filter",
    "split_subject",
    "subject",
]

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S: Final = 120.0
CONNECT_TIMEOUT_S: Final = 3.0
RETRY_S: Final = (0.2, 0.5, 1.0, 2.0)  # waits between attempts to (re)connect

# Everything nats-py raises for a lost, refused or timed-out server or request.
NATS_ERRORS: Final = (
    nats.errors.Error,
    nats.js.errors.Error,
    OSError,
    TimeoutError,
)


async def connect(
    url: str, *, name: str, reconnect: bool, closed: asyncio.Event | None = None
) -> NATS:
    """A NATS connection; raises TransportError when the server cannot be reached.

    ``closed`` is set when the connection is closed for good.
    """

    async def on_error(exc: Exception) -> None:
        log.debug("nats: %s", exc)

    async def on_closed() -> None:
        if closed is not None:
            closed.set()

    try:
        nc: NATS = await nats.connect(
            url,
            name=name,
            allow_reconnect=reconnect,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=CONNECT_TIMEOUT_S,
            error_cb=on_error,
            closed_cb=on_closed,
        )
    except NATS_ERRORS as exc:
        raise TransportError(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from exc
    return nc


class Restarts(Protocol):
    """Figures with a count of sessions started again."""

    restarts: int


async def run_sessions(
    session: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    stats: Restarts,
    log: logging.Logger,
    what: str,
) -> None:
    """Run ``session(stop)`` until ``stop`` is set, starting it again after every failure.

    A failure is a TransportError or a NATS error: it counts in ``stats.restarts``
    and is logged as a warning ``WHAT: ERROR; again in N s``. The waits follow
    RETRY_S (the last one repeats) and start over after a session that ended
    without failing.
    """
    attempt = 0
    while not stop.is_set():
        try:
            await session(stop)
            attempt = 0
        except (TransportError, *NATS_ERRORS) as exc:
            stats.restarts += 1
            wait = RETRY_S[min(attempt, len(RETRY_S) - 1)]
            attempt += 1
            log.warning("%s: %s; again in %.1f s", what, exc, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)


@contextlib.asynccontextmanager
async def session_connection(url: str, name: str) -> AsyncIterator[tuple[NATS, asyncio.Event]]:
    """A connection for one session and its ``closed`` event, closed at the end.

    It does not reconnect: ``closed`` set means the connection is lost.
    """
    closed = asyncio.Event()
    nc = await connect(url, name=name, reconnect=False, closed=closed)
    try:
        yield nc, closed
    finally:
        with contextlib.suppress(*NATS_ERRORS, asyncio.CancelledError):
            await asyncio.wait_for(nc.close(), 2.0)


def stream_config(stream: str, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=stream,
        subjects=[f"{SUBJECT_ROOT}.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


async def ensure_stream(js: JetStreamContext, stream: str, replicas: int = 1) -> None:
    """Create the stream when missing; an existing one must take ``evcharge.>``."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(stream_config(stream, replicas))
            log.info("created stream %s (%d replicas)", stream, replicas)
            return
        except nats.js.errors.BadRequestError as exc:
            raise ConfigError(f"cannot create stream {stream}: {exc.description}") from exc
    subjects = info.config.subjects or []
    if f"{SUBJECT_ROOT}.>" not in subjects:
        raise ConfigError(
            f"stream {stream} exists but does not take {SUBJECT_ROOT}.> (it takes {subjects})"
        )


async def last_published_seq(js: JetStreamContext, stream: str, region: str) -> int:
    """The region's seq of the last message in the stream (0 when it has none)."""
    try:
        msg = await js.get_last_msg(stream, region_filter(region))
    except nats.js.errors.NotFoundError:
        return 0
    headers: dict[str, Any] = msg.headers or {}
    try:
        got_region, seq = parse_msg_id(headers.get(MSG_ID))
    except ValueError as exc:
        raise ConfigError(
            f"stream {stream}: the last message on {msg.subject} was not published by a "
            f"bridge ({exc}); only bridges may publish to {SUBJECT_ROOT}.<region>.>"
        ) from None
    if got_region != region:
        raise ConfigError(f"stream {stream}: last message of {region} has id of {got_region}")
    return seq
