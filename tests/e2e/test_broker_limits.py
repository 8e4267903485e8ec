"""ev-broker serve: every limit of the security contract holds against a real broker.

Each test starts its own broker with the limit under test set small, so the
limit is reached quickly; waits are on conditions, with generous timeouts.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from tests.support.procs import BrokerPorts, Proc, start_broker
from tests.support.raw_clients import (
    HOST,
    LAT,
    LON,
    http_get,
    metric,
    send_status,
    vehicle,
    wait_for,
    zmq_ctx,
)

pytestmark = pytest.mark.e2e

HERE = {"latitude": LAT, "longitude": LON}


@contextlib.contextmanager
def broker_with(tmp_path: Path, ports: BrokerPorts, *options: str) -> Iterator[Proc]:
    proc = start_broker(ports, str(tmp_path / "broker.db"), *options)
    try:
        yield proc
    finally:
        proc.stop()


def rejected(ports: BrokerPorts, edge: str, reason: str) -> float:
    _, text = http_get(ports.http, "/metrics")
    return metric(text, f'evcharge_rejected_total{{edge="{edge}",reason="{reason}"}}')


def ping_time(port: int) -> float:
    with vehicle(port) as v:
        t0 = time.perf_counter()
        assert v.request("ping", {}, id=1) == {"type": "pong", "data": {}, "id": 1}
        return time.perf_counter() - t0


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes ``sock`` within ``timeout`` (anything sent is discarded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


# --- vehicles ---------------------------------------------------------------------------------


def test_flood_of_tiny_objects_does_not_starve_others(tmp_path: Path, ports: BrokerPorts) -> None:
    """256 KiB of ``{}{}...`` from a client that never reads: others are still answered
    quickly, the flood's replies stop at the unsent-bytes limit, and the flooder is
    closed once it has not read for --stalled-close."""
    with broker_with(tmp_path, ports, "--stalled-close", "2") as _:
        baseline = max(ping_time(ports.vehicle) for _ in range(5))
        flood = socket.create_connection((HOST, ports.vehicle))
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            flood.setblocking(False)
            payload = b"{}" * (128 * 1024)
            sent = 0
            deadline = time.monotonic() + 10
            worst = 0.0
            while sent < len(payload) and time.monotonic() < deadline:
                with contextlib.suppress(BlockingIOError):
                    sent += flood.send(payload[sent : sent + 65536])
                worst = max(worst, ping_time(ports.vehicle))
            for _ in range(10):
                worst = max(worst, ping_time(ports.vehicle))
            # generous bound for a loaded machine: the flood must not hold the loop
            assert worst < max(0.5, 20 * baseline), (worst, baseline)
            flood.setblocking(True)
            assert closed_within(flood, 20), "a flooder that never reads must be closed"
        finally:
            flood.close()
        assert rejected(ports, "vehicles", "stalled") == 1
        assert ping_time(ports.vehicle) < 1.0


def test_a_flood_that_reads_is_served_in_fair_turns(tmp_path: Path, ports: BrokerPorts) -> None:
    """A client pipelining 20,000 requests gets every answer, in order, while others are
    answered meanwhile."""
    with broker_with(tmp_path, ports, "--requests-per-turn", "16") as _:
        with vehicle(ports.vehicle) as busy:
            n = 20_000
            busy.sock.sendall(b"".join(b'{"type":"ping","data":{},"id":%d}' % i for i in range(n)))
            quick = ping_time(ports.vehicle)
            for i in range(n):
                assert busy.recv(timeout=30) == {"type": "pong", "data": {}, "id": i}
        assert quick < 2.0


def test_idle_connections_are_closed(tmp_path: Path, ports: BrokerPorts) -> None:
    with broker_with(tmp_path, ports, "--idle-timeout", "1") as _:
        with vehicle(ports.vehicle) as idle, vehicle(ports.vehicle) as busy:
            t0 = time.monotonic()
            for _ in range(8):  # 2 s of pings every 0.25 s keep ``busy`` open
                assert busy.request("ping", {})["type"] == "pong"
                time.sleep(0.25)
            assert idle.closed_by_peer(timeout=10)
            assert time.monotonic() - t0 >= 0.9
            assert busy.request("ping", {})["type"] == "pong"
        assert rejected(ports, "vehicles", "idle") >= 1


def test_connection_cap(tmp_path: Path, ports: BrokerPorts) -> None:
    with broker_with(tmp_path, ports, "--max-vehicle-connections", "3") as _:
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(vehicle(ports.vehicle)) for _ in range(3)]
            for v in held:
                assert v.request("ping", {})["type"] == "pong"
            extra = stack.enter_context(vehicle(ports.vehicle))
            assert extra.closed_by_peer(timeout=10)
            assert held[0].request("ping", {})["type"] == "pong"
        wait_for(lambda: rejected(ports, "vehicles", "connection_cap") == 1, what="counted")
        assert ping_time(ports.vehicle) < 2.0  # room again once they closed


def test_consulta_without_limite_is_truncated(tmp_path: Path, ports: BrokerPorts) -> None:
    with broker_with(tmp_path, ports) as _:
        for i in range(105):
            send_status(ports.status, f"P{i:03d}", latitude=LAT + i * 0.001)
        with vehicle(ports.vehicle) as v:

            def listed() -> dict[str, Any]:
                return v.request("consulta", {"id_veiculo": "CART", "localizacao": HERE}, id=7)

            wait_for(lambda: listed().get("truncated") is True, what="105 points listed")
            reply = listed()
            assert list(reply) == ["type", "data", "id", "truncated"]
            assert len(reply["data"]) == 100
            distances = [p["distance"] for p in reply["data"]]
            assert distances == sorted(distances) and reply["data"][0]["id"] == "P000"
            few = v.request("consulta", {"localizacao": HERE, "distancia_max": 1.0})
            assert "truncated" not in few and len(few["data"]) < 100
            asked = v.request("consulta", {"localizacao": HERE, "limite": 100})
            assert "truncated" not in asked and len(asked["data"]) == 100


# --- points -------------------------------------------------------------------------------------


def test_point_cap_drops_new_ids(tmp_path: Path, ports: BrokerPorts) -> None:
    with broker_with(tmp_path, ports, "--max-points", "3") as _:
        for i in range(5):
            send_status(ports.status, f"CAP{i}")
        wait_for(lambda: rejected(ports, "status", "point_cap") == 2, what="2 ids dropped")
        with vehicle(ports.vehicle) as v:
            ids = {p["id"] for p in v.request("consulta", {"localizacao": HERE})["data"]}
        assert len(ids) == 3
        send_status(ports.status, "CAP0")  # a known point still speaks
        assert rejected(ports, "status", "point_cap") == 2


# --- history ------------------------------------------------------------------------------------


def history(ctx: zmq.Context[zmq.Socket[bytes]], port: int, request: dict[str, Any]) -> Any:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{HOST}:{port}")
    try:
        sock.send(msgpack.packb(request))
        assert sock.poll(10_000), "no history reply"
        return msgpack.unpackb(sock.recv())
    finally:
        sock.close(linger=0)


def test_history_replies_are_capped(tmp_path: Path, ports: BrokerPorts) -> None:
    options = ("--history-max-events", "5", "--history-max-bytes", "600")
    with broker_with(tmp_path, ports, *options) as _, zmq_ctx() as ctx:
        for i in range(12):
            send_status(ports.status, f"H{i}")
        wait_for(
            lambda: history(ctx, ports.history, {"op": "since", "seq": 0})["last_seq"] >= 20,
            what="events",
        )
        reply = history(ctx, ports.history, {"op": "since", "seq": 0, "limit": 1000})
        assert reply["more"] is True and 1 <= len(reply["events"]) <= 5
        assert len(msgpack.packb(reply)) <= 600 + 200
        seqs = [e["seq"] for e in reply["events"]]
        assert seqs == list(range(1, len(seqs) + 1))
        seen: list[int] = []
        after = 0
        while True:  # paging with ``more`` reaches every event, none twice
            page = history(ctx, ports.history, {"op": "since", "seq": after})
            seen += [e["seq"] for e in page["events"]]
            if not page["more"]:
                break
            after = seen[-1]
        assert seen == list(range(1, page["last_seq"] + 1))


# --- HTTP ---------------------------------------------------------------------------------------


def http_raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def test_http_head_too_large_is_431(tmp_path: Path, ports: BrokerPorts) -> None:
    with broker_with(tmp_path, ports, "--max-http-head", "1024") as _:
        big = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 2000 + b"\r\n\r\n"
        answer = http_raw(ports.http, big)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert b"Connection: close" in answer
        ok = http_raw(ports.http, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
        assert rejected(ports, "http", "head_too_large") == 1


def test_http_connection_cap(tmp_path: Path, ports: BrokerPorts) -> None:
    with broker_with(tmp_path, ports, "--max-http-connections", "2") as _:
        with contextlib.ExitStack() as stack:
            held = [
                stack.enter_context(socket.create_connection((HOST, ports.http), timeout=10))
                for _ in range(2)
            ]
            held[0].sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            assert held[0].recv(65536).startswith(b"HTTP/1.1 200 OK")
            extra = stack.enter_context(socket.create_connection((HOST, ports.http), timeout=10))
            assert closed_within(extra, 10)
        wait_for(lambda: rejected(ports, "http", "connection_cap") == 1, what="counted")


def test_http_pipelined_unread_requests_stay_bounded(tmp_path: Path, ports: BrokerPorts) -> None:
    """Thousands of pipelined GET /metrics never read: one response at a time is
    prepared at a time, memory stays bounded, and the broker keeps serving."""
    with broker_with(tmp_path, ports) as proc:
        rss_before = _rss_kib(proc.pid)
        s = socket.create_connection((HOST, ports.http), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        request = b"GET /metrics HTTP/1.1\r\n\r\n" * 1000
        sent = 0
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and sent < 20 * len(request):
                try:
                    sent += s.send(request)
                except BlockingIOError:
                    time.sleep(0.01)
                except (ConnectionResetError, BrokenPipeError):
                    break
            status, _ = http_get(ports.http, "/healthz")
            assert status == 200
            assert _rss_kib(proc.pid) - rss_before < 20 * 1024  # far from 28 MB queued
        finally:
            s.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_http_reason_phrases() -> None:
    from broker.edges.http import response

    for status, reason in [
        (503, b"Service Unavailable"),
        (500, b"Internal Server Error"),
        (431, b"Request Header Fields Too Large"),
    ]:
        head = response(status, "text/plain", b"x", close=True, head=False)
        assert head.startswith(b"HTTP/1.1 %d " % status + reason + b"\r\n")


def test_undecodable_input_is_counted(tmp_path: Path, ports: BrokerPorts) -> None:
    with broker_with(tmp_path, ports) as _, vehicle(ports.vehicle) as v:
        v.send(b"{}{}not json\n")
        assert [v.recv()["data"]["code"] for _ in range(3)] == ["invalid", "invalid", "bad_json"]
        assert rejected(ports, "vehicles", "invalid") == 2
        assert rejected(ports, "vehicles", "bad_json") == 1
