"""``set_availability`` on the history port of a real broker: refusals, station reports, restart."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from common.codec import pack, unpack
from tests.support.procs import BrokerPorts, broker_ports, start_broker
from tests.support.raw_clients import keepalive, send_status, wait_for

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def history(ports: BrokerPorts) -> Iterator[Any]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{ports.history}")

    def ask(request: dict[str, Any]) -> dict[str, Any]:
        sock.send(pack(request))
        assert sock.poll(15_000), f"no reply to {request}"
        reply: dict[str, Any] = unpack(sock.recv())
        return reply

    try:
        yield ask
    finally:
        sock.close(linger=0)
        ctx.term()


def point(ask: Any, pid: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in ask({"op": "snapshot"})["points"] if p["id"] == pid)
    return found


def test_out_of_service_is_kept_from_stations_and_survives_a_restart(tmp_path: Path) -> None:
    ports = broker_ports()
    db = str(tmp_path / "broker.db")
    broker = start_broker(ports, db)
    try:
        send_status(ports.status, "AV-1")
        with history(ports) as ask:
            wait_for(lambda: any(p["id"] == "AV-1" for p in ask({"op": "snapshot"})["points"]))
            for bad, why in (
                ({"point_id": "NOPE", "available": False, "reason": "x"}, "unknown point"),
                ({"point_id": "AV-1", "available": False}, "reason"),
                ({"point_id": "AV-1", "available": "no", "reason": "x"}, "available"),
                ({"available": False, "reason": "x"}, "point_id"),
            ):
                reply = ask({"op": "set_availability", **bad})
                assert why in reply["error"], (bad, reply)
            reply = ask(
                {
                    "op": "set_availability",
                    "point_id": "AV-1",
                    "available": False,
                    "reason": "flood",
                }
            )
            assert reply["ok"] is True and reply["seq"] > 0
            events = ask({"op": "since", "seq": reply["seq"] - 5, "limit": 10})["events"]
            [change] = [e for e in events if e["topic"] == "point.availability"]
            assert change["data"] == {
                "point_id": "AV-1", "available": False, "reason": "flood", "by": "anonymous"
            }  # fmt: skip
            with keepalive(ports.status, "AV-1", every=0.2):  # the station says "available"
                wait_for(lambda: ask({"op": "snapshot"})["seq"] >= reply["seq"])
                p = point(ask, "AV-1")
                assert (p["estado"], p["fora_de_servico"], p["reason"]) == (
                    "indisponivel", True, "flood"
                )  # fmt: skip
    finally:
        assert broker.stop() == 0
    broker = start_broker(ports, db)
    try:
        with history(ports) as ask:
            p = point(ask, "AV-1")
            assert (p["estado"], p["fora_de_servico"], p["reason"]) == (
                "indisponivel",
                True,
                "flood",
            )
            reply = ask({"op": "set_availability", "point_id": "AV-1", "available": True})
            assert reply["ok"] is True
            assert "fora_de_servico" not in point(ask, "AV-1")
    finally:
        broker.stop()
