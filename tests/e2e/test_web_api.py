"""The web console's HTTP API against a real broker, real stations and the web process.

Every endpoint, the token refusals, the CSV export against the billing
worker's own report, and the event stream resuming by ``Last-Event-ID``
without a gap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.procs import Proc, free_port, start
from tests.support.raw_clients import Vehicle, wait_for
from tests.support.web_stack import TOKEN, WebStack, start_web, web_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAST = ("--speed", "20000")  # a 20% -> 60% charge takes well under a second
SLOW = ("--speed", "1")  # a session that stays running for the whole module


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    tmp = tmp_path_factory.mktemp("web")
    with web_stack(tmp) as s:
        s.add_station("WEB-A", -12.27, -38.97, *FAST)
        s.add_station("WEB-B", -12.28, -38.95, *FAST)
        s.add_station("WEB-C", -12.25, -38.99, *SLOW)
        s.wait_online("WEB-A", "WEB-B", "WEB-C")
        yield s


@pytest.fixture(scope="module")
def billing(stack: WebStack) -> Iterator[Proc]:
    db = stack.tmp / "billing.db"
    proc = start(
        [
            "python", "-m", "broker", "billing", "--events-port", str(stack.ports.events),
            "--history-port", str(stack.ports.history), "--db", str(db),
            *stack.ports.cred_args(),
        ]
    )  # fmt: skip
    try:
        proc.read_until("billing ready", timeout=30)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def billed(stack: WebStack, billing: Proc) -> list[str]:
    """Three completed sessions by two vehicles, billed in the console."""
    sessions = [
        stack.charge("WEBCAR1", "WEB-A"),
        stack.charge("WEBCAR2", "WEB-B", battery=30, target=90),
    ]

    def done(n: int) -> bool:
        return len(stack.get_json("/api/sessions?active=false")) >= n

    wait_for(lambda: done(2), 30, "two billed sessions in the console", interval=0.2)
    sessions.append(stack.charge("WEBCAR1", "WEB-A", battery=50, target=70))
    wait_for(lambda: done(3), 30, "three billed sessions in the console", interval=0.2)
    return sessions


def test_health_is_open_and_reports_the_applied_seq(stack: WebStack) -> None:
    status, _, body = stack.request("/healthz", token=None)
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok" and health["seq"] > 0


@pytest.mark.parametrize(
    "path",
    ["/", "/api/points", "/api/points/WEB-A", "/api/stats", "/api/events", "/api/openapi.json",
     "/static/console.js", "/no/such/path"],
)  # fmt: skip
def test_every_other_path_refuses_a_missing_or_wrong_token(stack: WebStack, path: str) -> None:
    bodies = set()
    for token, headers in (
        (None, {}),
        ("wrong", {}),
        (None, {"Cookie": "ev_token=wrong"}),
        (None, {"Authorization": f"Basic {TOKEN}"}),
    ):
        status, _, body = stack.request(path, token=token, headers=headers)
        assert status == 401, (path, token, headers, status)
        bodies.add(body)
    assert bodies == {b'{"error":"unauthorized"}'}  # the same answer: nothing revealed
    status, _, _ = stack.request(path + "?token=wrong", token=None)
    assert status == 401


def test_token_url_sets_a_cookie_and_redirects_without_the_token(stack: WebStack) -> None:
    status, headers, _ = stack.request(f"/?token={TOKEN}", token=None)
    assert status == 303
    assert headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"ev_token={TOKEN};") and "HttpOnly" in cookie
    status, headers, body = stack.request(
        "/api/points", token=None, headers={"Cookie": f"ev_token={TOKEN}"}
    )
    assert status == 200 and json.loads(body)
    status, _, page = stack.request("/", token=None, headers={"Cookie": f"ev_token={TOKEN}"})
    assert status == 200 and b"/static/leaflet/leaflet.js" in page


def test_points_list_every_station_with_its_state(stack: WebStack) -> None:
    rows = {p["id"]: p for p in stack.get_json("/api/points")}
    assert {"WEB-A", "WEB-B", "WEB-C"} <= set(rows)
    a = rows["WEB-A"]
    assert a["online"] is True and a["estado"] in ("disponivel", "carregando")
    assert a["latitude"] == pytest.approx(-12.27) and a["longitude"] == pytest.approx(-38.97)
    assert a["fora_de_servico"] is False and a["queue"] == [] and a["last_heard"]
    assert stack.point("WEB-B")["id"] == "WEB-B"
    status, _, body = stack.request("/api/points/NOPE")
    assert status == 404 and b"NOPE" in body


def test_queue_and_running_session_show_on_the_point(stack: WebStack) -> None:
    session = stack.charge("WEBSLOW", "WEB-C", battery=10, target=90)
    with contextlib.closing(Vehicle(stack.ports.vehicle, "WEBQ1")) as v:
        reply = v.ask("reserva", id_ponto_recarga="WEB-C", tempo_estimado=5)
    assert reply["data"]["code"] == "reserved", reply

    def shown() -> bool:
        p = stack.point("WEB-C")
        return p["vehicle_id"] == "WEBSLOW" and p["queue"] == ["WEBQ1"]

    wait_for(shown, 10, "charging vehicle and queue of WEB-C", interval=0.1)
    p = stack.point("WEB-C")
    assert p["estado"] == "carregando" and p["session_id"] == session and p["queue_size"] == 1
    active = stack.get_json("/api/sessions?active=true")
    mine = [s for s in active if s["session_id"] == session]
    assert mine and mine[0]["active"] is True and mine[0]["point_id"] == "WEB-C"
    assert all(s["active"] for s in active)


def test_bills_json_and_csv_equal_the_billing_ledger(
    stack: WebStack, billing: Proc, billed: list[str]
) -> None:
    import subprocess
    import sys

    db = stack.tmp / "billing.db"

    def report(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "broker", "billing", "report", "--db", str(db), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout

    def ledger_has(n: int) -> bool:
        return report("--format", "csv").count("\n") >= n + 1

    wait_for(lambda: ledger_has(3), 30, "three sessions in the billing ledger", interval=0.3)
    for query, args in (("", ()), ("&vehicle=WEBCAR1", ("--vehicle", "WEBCAR1"))):
        status, headers, body = stack.request(f"/api/bills?format=csv{query}")
        assert status == 200 and headers["content-type"].startswith("text/csv")
        assert body.decode() == report("--format", "csv", *args)
    bills = stack.get_json("/api/bills?vehicle=WEBCAR1")
    assert {b["session_id"] for b in bills} == {billed[0], billed[2]}
    assert all(b["vehicle_id"] == "WEBCAR1" and b["reason"] == "target_reached" for b in bills)
    ledger = json.loads(report("--format", "json", "--vehicle", "WEBCAR1"))
    total = ledger["accounts"]["WEBCAR1"]["total"]
    assert sum(b["cost"] for b in bills) == pytest.approx(total)
    # since: sessions that ended at or after the time
    status, _, body = stack.request("/api/bills?format=csv&since=2999-01-01T00:00:00Z")
    assert status == 200 and body.decode().count("\n") == 1  # the header only
    assert len(stack.get_json("/api/bills?since=2000-01-01T00:00:00")) == len(
        stack.get_json("/api/bills")
    )
    status, _, body = stack.request("/api/bills?since=yesterday")
    assert status == 400 and b"since" in body
    status, _, _ = stack.request("/api/bills?format=xml")
    assert status == 400


def test_sessions_and_stats_sum_the_bills(stack: WebStack, billed: list[str]) -> None:
    done = stack.get_json("/api/sessions?active=false")
    assert set(billed) <= {s["session_id"] for s in done}
    assert all(not s["active"] and s["cost"] is not None for s in done)
    both = stack.get_json("/api/sessions")
    assert len(both) == len(done) + len(stack.get_json("/api/sessions?active=true"))
    bills = stack.get_json("/api/bills")
    stats = stack.get_json("/api/stats")
    for period in (stats["all_time"], stats["today"]):
        assert period["sessions"] == len(bills)
        assert period["energy_kwh"] == pytest.approx(sum(b["energy_kwh"] for b in bills), abs=1e-3)
        assert period["revenue"] == pytest.approx(sum(b["cost"] for b in bills), abs=0.005)
        assert period["sessions_by_reason"] == {"target_reached": len(bills)}
        used = {u["point_id"]: u for u in period["utilisation"]}
        assert {"WEB-A", "WEB-B"} <= set(used)
        assert all(0 <= u["share"] <= 1 for u in used.values())
    assert stats["points"] >= 3 and stats["points_online"] >= 3
    assert stats["sessions_active"] == len(stack.get_json("/api/sessions?active=true"))


def test_availability_takes_a_point_out_and_puts_it_back(stack: WebStack) -> None:
    with contextlib.closing(Vehicle(stack.ports.vehicle, "WEBOOS1")) as v:
        assert v.ask("reserva", id_ponto_recarga="WEB-B", tempo_estimado=30)["data"]["code"] == (
            "reserved"
        )
        status, _, body = stack.request(
            "/api/points/WEB-B/availability",
            method="POST",
            body={"available": False, "reason": "cable damaged"},
        )
        assert status == 200, body
        answer = json.loads(body)
        assert answer["ok"] is True and answer["available"] is False
        # answered once applied: the next read shows it
        p = stack.point("WEB-B")
        assert (p["fora_de_servico"], p["reason"], p["estado"]) == (
            True, "cable damaged", "indisponivel"
        )  # fmt: skip
        assert p["queue"] == []  # the queued reservation was cancelled
        pushed = v.push("reserva_cancelada", timeout=10)["data"]
        assert pushed["motivo"] == "point_disabled"
        refused = v.ask("reserva", id_ponto_recarga="WEB-B")["data"]
        assert refused["code"] == "point_unavailable"
        assert stack.get_json("/api/stats")["points_out_of_service"] == 1
        status, _, body = stack.request(
            "/api/points/WEB-B/availability", method="POST", body={"available": True}
        )
        assert status == 200, body
        assert stack.point("WEB-B")["fora_de_servico"] is False
        assert v.ask("reserva", id_ponto_recarga="WEB-B")["data"]["code"] == "reserved"
        v.ask("cancelar", id_ponto_recarga="WEB-B")


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/points/NOPE/availability", {"available": False, "reason": "x"}, 404),
        ("/api/points/WEB-A/availability", {"available": False}, 400),
        ("/api/points/WEB-A/availability", {"available": False, "reason": "  "}, 400),
        ("/api/points/WEB-A/availability", {"available": "no"}, 400),
        ("/api/points/WEB-A/availability", {"reason": "x"}, 400),
        ("/api/points/WEB-A/availability", {"available": False, "reason": "x" * 201}, 400),
    ],
)
def test_bad_availability_requests_are_refused_clearly(
    stack: WebStack, path: str, body: dict[str, Any], status: int
) -> None:
    got, _, answer = stack.request(path, method="POST", body=body)
    assert got == status, answer
    assert json.loads(answer)  # a JSON body saying why
    assert stack.point("WEB-A")["fora_de_servico"] is False


def test_a_console_with_a_consumer_credential_gets_403_for_the_toggle(stack: WebStack) -> None:
    """The broker refuses set_availability to a consumer: that console answers 403."""
    web_port = free_port()
    web = start_web(stack.ports, web_port, "consumer")
    try:
        reader = dataclasses.replace(stack, web_port=web_port, web=web, stations={})
        assert reader.point("WEB-A")["fora_de_servico"] is False  # it reads the bus
        status, _, body = reader.request(
            "/api/points/WEB-A/availability",
            method="POST",
            body={"available": False, "reason": "cable damaged"},
        )
        assert status == 403, body
        assert "operator credential" in json.loads(body)["detail"]
        for console in (reader, stack):  # nothing changed, as either console sees it
            p = console.point("WEB-A")
            assert p["fora_de_servico"] is False and p["reason"] is None
        assert stack.get_json("/api/stats")["points_out_of_service"] == 0
        with contextlib.closing(Vehicle(stack.ports.vehicle, "WEB403")) as v:
            reply = v.ask("reserva", id_ponto_recarga="WEB-A", tempo_estimado=30)["data"]
            assert reply["code"] == "reserved", reply  # the point still takes reservations
            v.ask("cancelar", id_ponto_recarga="WEB-A")
    finally:
        web.stop()


def test_openapi_documents_every_endpoint(stack: WebStack) -> None:
    spec = stack.get_json("/api/openapi.json")
    paths = set(spec["paths"])
    assert {
        "/api/points",
        "/api/points/{point_id}",
        "/api/points/{point_id}/availability",
        "/api/sessions",
        "/api/bills",
        "/api/stats",
        "/api/events",
    } <= paths
    assert "post" in spec["paths"]["/api/points/{point_id}/availability"]


# --- the event stream -----------------------------------------------------------------


class SSE:
    """A raw Server-Sent-Events client over a socket (with the token)."""

    def __init__(self, port: int, path: str, last_event_id: int | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Accept: text/event-stream\r\n{extra}\r\n"
            ).encode()
        )
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        self.chunked = b"transfer-encoding: chunked" in head.lower()
        self.text = ""

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("stream closed")
            self.buf += chunk
        out, self.buf = self.buf.split(sep, 1)
        return out

    def _more(self) -> None:
        if self.chunked:
            size = int(self._until(b"\r\n").split(b";")[0], 16)
            while len(self.buf) < size + 2:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("stream closed")
                self.buf += chunk
            self.text += self.buf[:size].decode()
            self.buf = self.buf[size + 2 :]
        else:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("stream closed")
            self.text += chunk.decode()

    def events(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The next ``n`` messages with an id, as ``{"id": int, **data}``."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while len(out) < n:
            assert time.monotonic() < deadline, f"only {len(out)} of {n} events"
            while "\n\n" not in self.text.replace("\r\n", "\n"):
                self._more()
            norm = self.text.replace("\r\n", "\n")
            block, _, rest = norm.partition("\n\n")
            self.text = rest
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                if line.startswith(":") or ":" not in line:
                    continue
                name, _, value = line.partition(":")
                fields[name] = fields.get(name, "") + value.removeprefix(" ")
            if "id" in fields and fields.get("data"):
                out.append({"id": int(fields["id"]), **json.loads(fields["data"])})
        return out

    def close(self) -> None:
        self.sock.close()


def make_events(stack: WebStack, n: int, tag: str) -> None:
    """``n`` bus events: vehicles connecting and disconnecting."""
    for i in range(n // 2):
        with contextlib.closing(Vehicle(stack.ports.vehicle, f"{tag}{i}")) as v:
            v.ask("ping")


def test_event_stream_resumes_by_last_event_id_without_a_gap(stack: WebStack) -> None:
    start_seq = stack.get_json("/healthz")["seq"]
    first = SSE(stack.web_port, "/api/events")
    try:
        make_events(stack, 20, "SSEA")
        got = first.events(10)
    finally:
        first.close()
    seqs = [e["id"] for e in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # no gap, in order
    assert seqs[0] > start_seq
    assert all(e["seq"] == e["id"] and {"ts", "topic", "data"} <= set(e) for e in got)
    last = seqs[-1]
    make_events(stack, 40, "SSEB")  # published while nobody listens
    resumed = SSE(stack.web_port, "/api/events", last_event_id=last)
    try:
        more = resumed.events(40)
    finally:
        resumed.close()
    assert [e["id"] for e in more] == list(range(last + 1, last + 41))
    # and from far back: served from the broker's history, still without a gap
    old = SSE(stack.web_port, "/api/events?since=0")
    try:
        replay = old.events(30)
    finally:
        old.close()
    assert [e["id"] for e in replay] == list(range(1, 31))
    assert replay[0]["topic"] == "broker.started"
    status, _, _ = stack.request("/api/events", headers={"Last-Event-ID": "x"})
    assert status == 400


def test_events_carry_the_changed_point_row(stack: WebStack) -> None:
    # from the applied seq: a stream without one starts at whatever event follows its
    # subscription, which can come after the reservation below
    since = stack.get_json("/healthz")["seq"]
    stream = SSE(stack.web_port, f"/api/events?since={since}")
    try:
        with contextlib.closing(Vehicle(stack.ports.vehicle, "WEBROW")) as v:
            reply = v.ask("reserva", id_ponto_recarga="WEB-B", tempo_estimado=30)
            assert reply["data"]["code"] == "reserved", reply
            v.ask("cancelar", id_ponto_recarga="WEB-B")
        seen: list[dict[str, Any]] = []
        while not any(e["topic"] == "reservation.cancelled" for e in seen):
            seen.extend(stream.events(1))
    finally:
        stream.close()
    created = next(e for e in seen if e["topic"] == "reservation.created")
    assert created["point"]["id"] == "WEB-B" and "WEBROW" in created["point"]["queue"]
    cancelled = next(e for e in seen if e["topic"] == "reservation.cancelled")
    assert "WEBROW" not in cancelled["point"]["queue"]
