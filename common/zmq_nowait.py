"""ZeroMQ sends and receives that never wait, for plain and asyncio sockets alike.

A plain ``zmq.Socket`` raises when a ``NOBLOCK`` call cannot go through; a
``zmq.asyncio.Socket`` returns a future that is already resolved (pyzmq
short-cuts ``NOBLOCK`` calls), holding the result or the error. These helpers
give both the same answer, so that the broker's edges (asyncio) and the
stations' links (plain sockets) write the idiom once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq


def send_nowait(sock: zmq.Socket[Any], frames: list[bytes]) -> zmq.ZMQError | None:
    """Send the multipart message ``frames`` without waiting; None when it went out.

    Else the error, not raised: ``zmq.Again`` when the peer's queue is full (or,
    without ``ROUTER_MANDATORY``, nobody is there), a ``ZMQError`` with errno
    ``EHOSTUNREACH`` when a ``ROUTER_MANDATORY`` socket has no such peer, or any
    other ``ZMQError``.
    """
    try:
        sent = sock.send_multipart(frames, flags=zmq.NOBLOCK)
    except zmq.ZMQError as exc:
        return exc
    if isinstance(sent, asyncio.Future):
        exc = sent.exception() if sent.done() else None
        if exc is not None:
            if isinstance(exc, zmq.ZMQError):
                return exc
            raise exc
    return None


def recv_nowait(sock: zmq.Socket[Any], copy: bool = True) -> list[Any] | None:
    """The next queued multipart message, or None when none is queued (never waits).

    ``copy=False`` gives ``zmq.Frame`` objects (their properties, e.g. the ZAP
    ``User-Id``, are then readable). Errors other than ``zmq.Again`` are raised.
    """
    try:
        got = sock.recv_multipart(flags=zmq.NOBLOCK, copy=copy)
    except zmq.Again:
        return None
    if isinstance(got, asyncio.Future):
        if not got.done():
            return None
        exc = got.exception()
        if exc is not None:
            if isinstance(exc, zmq.Again):
                return None
            raise exc
        return got.result()
    return got
