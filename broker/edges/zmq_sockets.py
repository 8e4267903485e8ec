"""Binding the broker's ZeroMQ sockets: one place for options, errors and endpoints."""

from __future__ import annotations

import zmq
import zmq.asyncio

from common.errors import TransportError


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
