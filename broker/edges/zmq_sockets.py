"""The broker's ZeroMQ sockets: binding (options, errors, endpoints) and the receive loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from common.errors import TransportError
from common.zmq_nowait import recv_nowait

log = logging.getLogger(__name__)

#: How long the receive loop pauses after an unexpected receive error.
RECV_ERROR_PAUSE_S: Final = 0.1


def bind_socket(
    ctx: zmq.asyncio.Context,
    kind: int,
    endpoint: str,
    what: str,
    options: dict[int, int | bytes],
) -> zmq.asyncio.Socket:
    """A socket of ``kind`` with ``options`` set, bound to ``endpoint``.

    Raises TransportError naming ``what`` (e.g. "the history ROUTER") when the
    endpoint cannot be bound (in use, malformed); the socket is then closed.
    """
    sock = ctx.socket(kind)
    try:
        for option, value in options.items():
            sock.setsockopt(option, value)
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise TransportError(f"cannot bind {what} on {endpoint}: {exc}") from exc
    return sock


def bound_endpoint(sock: zmq.asyncio.Socket | None, configured: str) -> str:
    """The endpoint ``sock`` is bound to (the real port for a wildcard), else ``configured``."""
    if sock is None:
        return configured
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else str(last)


def user_id_of(frame: zmq.Frame) -> str | None:
    """The ZAP user id (the credential's name) of the connection ``frame`` came from."""
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return value if isinstance(value, str) and value else None


#: Handshakes that fail before ZAP is asked (a client without CURVE, or garbage);
#: the ones ZAP refuses are counted by the authenticator itself.
HANDSHAKE_FAILURES: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)


async def count_handshake_failures(
    sock: zmq.asyncio.Socket, edge: str, reject: Callable[[str, str, str], None]
) -> None:
    """Report every failed security handshake on ``sock`` as ``reject(edge, "handshake_failed")``.

    Runs until cancelled (the monitor is then stopped); uses libzmq's socket monitor.
    """
    monitor: zmq.asyncio.Socket = sock.get_monitor_socket(HANDSHAKE_FAILURES)
    try:
        while True:
            try:
                frames = await monitor.recv_multipart()
                event = parse_monitor_message(frames)
            except zmq.ZMQError:
                return
            except (ValueError, KeyError, IndexError):
                continue
            endpoint = event.get("endpoint", b"")
            where = endpoint.decode("utf-8", "replace") if isinstance(endpoint, bytes) else ""
            reject(edge, "handshake_failed", f"no CURVE or a broken handshake on {where}")
    finally:
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        monitor.close(linger=0)


async def receive_loop(
    sock: zmq.asyncio.Socket,
    handle: Callable[[list[Any]], None],
    what: str,
    *,
    copy: bool = True,
    batch: int = 1,
) -> None:
    """Hand every multipart message received on ``sock`` to ``handle``, in slices.

    Each turn awaits one message, takes up to ``batch - 1`` more that are already
    queued (without a future each), then yields to the loop: awaiting a ready
    receive never yields, so without the slices a flood would hold the loop.
    ``copy=False`` hands ``zmq.Frame`` objects (to read the ZAP ``User-Id``).
    ``handle`` must not raise. Returns when the socket or its context is closed;
    any other receive error is logged (naming ``what``) and the loop goes on.
    """
    while True:
        try:
            handle(await sock.recv_multipart(copy=copy))
            for _ in range(batch - 1):
                more = recv_nowait(sock, copy)
                if more is None:
                    break
                handle(more)
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                return
            log.error("%s receive failed: %r", what, exc)
            await asyncio.sleep(RECV_ERROR_PAUSE_S)
            continue
        await asyncio.sleep(0)
