"""The history ROUTER (HistoryServer) with real DEALER and REQ sockets on free ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from broker.edges.history import HistoryServer, split_envelope
from tests.support.zmq_edges import (
    ANY_PORT,
    WAIT_S,
    FakeLog,
    recv_map,
    run,
    zmq_context,
)

pytestmark = pytest.mark.e2e


@asynccontextmanager
async def history_server(
    ctx: zmq.asyncio.Context, log: FakeLog, snapshot: Callable[[], dict[str, Any]] | None = None
) -> AsyncIterator[HistoryServer]:
    server = HistoryServer(
        ctx,
        ANY_PORT,
        events_since=log.events_since,
        snapshot=snapshot or log.snapshot,
        accounts=log.accounts,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def ask_dealer(sock: zmq.asyncio.Socket, request: Any) -> dict[str, Any]:
    await sock.send(msgpack.packb(request))
    return await recv_map(sock)


async def ask_req(sock: zmq.asyncio.Socket, request: Any) -> dict[str, Any]:
    await sock.send(msgpack.packb(request))
    frames = await asyncio.wait_for(sock.recv_multipart(), WAIT_S)
    assert len(frames) == 1
    obj = msgpack.unpackb(frames[0])
    assert isinstance(obj, dict)
    return obj


@pytest.mark.parametrize("kind", ["dealer", "req"])
def test_history_since_snapshot_accounts_and_errors(kind: str) -> None:
    async def body() -> None:
        async with zmq_context() as ctx:
            log = FakeLog(2500)
            async with history_server(ctx, log) as server:
                sock = ctx.socket(zmq.DEALER if kind == "dealer" else zmq.REQ)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(server.endpoint)
                ask = ask_dealer if kind == "dealer" else ask_req

                r = await ask(sock, {"op": "since", "seq": 10, "limit": 5})
                assert [e["seq"] for e in r["events"]] == [11, 12, 13, 14, 15]
                assert r["events"][0] == {
                    "seq": 11,
                    "ts": 1_700_000_011.0,
                    "topic": "point.status",
                    "data": {"n": 11, "p": "CP1"},
                }
                assert r["last_seq"] == 2500 and r["more"] is True

                r = await ask(sock, {"op": "since", "seq": 0})  # default limit
                assert len(r["events"]) == 1000 and r["more"] is True
                r = await ask(sock, {"op": "since", "seq": 1000, "limit": 5000})  # clamped
                assert [r["events"][0]["seq"], r["events"][-1]["seq"]] == [1001, 2000]
                assert log.calls[-2:] == [(0, 1000), (1000, 1000)]
                r = await ask(sock, {"op": "since", "seq": 2400, "limit": 1000})
                assert len(r["events"]) == 100 and r["last_seq"] == 2500 and r["more"] is False
                r = await ask(sock, {"op": "since", "seq": 2500})
                assert r == {"events": [], "last_seq": 2500, "more": False}

                assert await ask(sock, {"op": "snapshot"}) == log.snapshot()
                assert await ask(sock, {"op": "accounts"}) == {"accounts": log.accounts()}

                for bad in (
                    {"op": "explode"},
                    {"seq": 3},
                    {"op": "since", "seq": -1},
                    {"op": "since", "seq": "x"},
                    {"op": "since", "seq": 0, "limit": 0},
                    [1, 2],
                    "since",
                ):
                    r = await ask(sock, bad)
                    assert set(r) == {"error"}, (bad, r)
                    assert isinstance(r["error"], str) and r["error"]
                r = await ask(sock, {"op": "explode"})
                assert r["error"] == (
                    "unknown op 'explode'; known ops: since, snapshot, accounts, "
                    "set_availability, sites, set_site, remove_site, tariffs"
                )
                r = await ask(sock, {"op": "since", "seq": -1})
                assert r["error"].startswith("seq: ")
                # not msgpack at all
                await sock.send(b"\xc1\xc1")
                r = await recv_map(sock)
                assert set(r) == {"error"}
                assert server.stats["errors"] == 10
                # still serving
                r = await ask(sock, {"op": "since", "seq": 2499})
                assert [e["seq"] for e in r["events"]] == [2500]

    run(body())


def test_history_multi_frame_request_and_failing_callback_get_errors() -> None:
    def broken_snapshot() -> dict[str, Any]:
        raise RuntimeError("store gone")

    async def body() -> None:
        async with zmq_context() as ctx:
            log = FakeLog(3)
            async with history_server(ctx, log, snapshot=broken_snapshot) as server:
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(server.endpoint)
                await sock.send_multipart([msgpack.packb({"op": "snapshot"})] * 2)
                r = await recv_map(sock)
                assert "error" in r and "frame" in r["error"]
                r = await ask_dealer(sock, {"op": "snapshot"})
                assert set(r) == {"error"} and "internal" in r["error"]
                # a DEALER that mimics REQ (empty delimiter) gets the same envelope back
                await sock.send_multipart([b"", msgpack.packb({"op": "since", "seq": 2})])
                frames = await asyncio.wait_for(sock.recv_multipart(), WAIT_S)
                assert frames[0] == b"" and len(frames) == 2
                assert [e["seq"] for e in msgpack.unpackb(frames[1])["events"]] == [3]

    run(body())


def test_split_envelope_shapes() -> None:
    assert split_envelope([b"id", b"", b"req"]) == ([b"id", b""], [b"req"])
    assert split_envelope([b"id", b"req"]) == ([b"id"], [b"req"])
    assert split_envelope([b"id", b""]) == ([b"id"], [b""])
    assert split_envelope([b"id"]) == ([b"id"], [])
    assert split_envelope([b"id", b"a", b"b"]) == ([b"id"], [b"a", b"b"])
