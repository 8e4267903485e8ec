"""An eMSP peer for the OCPI tests: a real HTTP server speaking OCPI 2.2.1, from the spec.

It serves versions, version details, credentials (so a CPO can register with
it), a Locations/Sessions/CDRs receiver, a Tokens sender and the Commands
result endpoint; everything it receives is recorded in arrival order and
checked against :mod:`tests.support.ocpi_schemas` (problems kept in
``invalid``). :meth:`EmspPeer.down` closes its listening socket and
:meth:`EmspPeer.up` opens it again on the same port (an eMSP outage).
:class:`OcpiClient` is the eMSP's side of the calls to the CPO.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.ocpi_schemas import problems

V = "2.2.1"
CC, PARTY = "NL", "EMS"


def auth(token: str) -> str:
    return "Token " + base64.b64encode(token.encode()).decode()


def stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def token_obj(uid: str, *, valid: bool = True) -> dict[str, Any]:
    return {
        "country_code": CC, "party_id": PARTY, "uid": uid, "type": "APP_USER",
        "contract_id": f"NL-EMS-C{uid}"[:36], "issuer": "Peer eMSP", "valid": valid,
        "whitelist": "ALLOWED", "last_updated": stamp(),
    }  # fmt: skip


@dataclass
class Received:
    method: str
    path: str
    body: Any
    at: float


@dataclass
class EmspPeer:
    port: int
    token_b: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # we give the CPO
    cpo_token: str | None = None  # the token we present to the CPO (its token C)
    tokens: list[dict[str, Any]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    accept_token_a: str | None = None  # when the CPO registers with us, it presents this
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _conns: set[socket.socket] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def versions_url(self) -> str:
        return f"{self.url}/ocpi/versions"

    def up(self) -> None:
        peer = self

        class Handler(_Handler):
            owner = peer

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Stop listening and cut every open connection (kept-alive ones too)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    # --- what arrived ---------------------------------------------------------------

    def got(self, pred: Callable[[Received], bool]) -> list[Received]:
        with self._lock:
            return [r for r in self.received if pred(r)]

    def wait(
        self, pred: Callable[[Received], bool], timeout: float = 30.0, what: str = ""
    ) -> Received:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.got(pred)
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(
            f"eMSP never received {what or pred}; got {[(r.method, r.path) for r in self.received]}"
        )

    def _record(self, method: str, path: str, body: Any, kind: str | None) -> None:
        with self._lock:
            self.received.append(Received(method, path, body, time.monotonic()))
            if kind is not None:
                self.invalid.extend(f"{method} {path}: {p}" for p in problems(kind, body))


class _Handler(BaseHTTPRequestHandler):
    owner: EmspPeer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._conns.add(self.connection)

    def _send(
        self,
        data: Any = None,
        status: int = 1000,
        http: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        doc: dict[str, Any] = {"status_code": status, "timestamp": stamp()}
        if data is not None:
            doc["data"] = data
        raw = json.dumps(doc).encode()
        self.send_response(http)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _authorized(self, *extra: str | None) -> bool:
        got = self.headers.get("Authorization", "")
        allowed = {auth(t) for t in (self.owner.token_b, *extra) if t}
        if got in allowed:
            return True
        self._send(None, 2001, 401)
        return False

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else None

    def do_GET(self) -> None:
        p = self.owner
        path, _, query = self.path.partition("?")
        if not self._authorized(p.accept_token_a):
            return
        if path == "/ocpi/versions":
            self._send([{"version": V, "url": f"{p.url}/ocpi/{V}"}])
        elif path == f"/ocpi/{V}":
            base = f"{p.url}/ocpi/{V}"
            ends = [
                ("credentials", "SENDER"), ("credentials", "RECEIVER"), ("locations", "RECEIVER"),
                ("sessions", "RECEIVER"), ("cdrs", "RECEIVER"), ("tokens", "SENDER"),
                ("tariffs", "RECEIVER"),
                ("commands", "SENDER"),
            ]  # fmt: skip
            self._send({"version": V, "endpoints": [
                {"identifier": i, "role": r, "url": f"{base}/{i}"} for i, r in ends
            ]})  # fmt: skip
        elif path == f"/ocpi/{V}/tokens":
            args = dict(kv.split("=", 1) for kv in query.split("&") if "=" in kv)
            offset, limit = int(args.get("offset", 0)), int(args.get("limit", 2))
            page = p.tokens[offset : offset + limit]
            headers = {"X-Total-Count": str(len(p.tokens)), "X-Limit": str(limit)}
            if offset + limit < len(p.tokens):
                nxt = f"{p.url}{path}?offset={offset + limit}&limit={limit}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            self._send(page, headers=headers)
        else:
            self._send(None, 2000, 404)

    def do_POST(self) -> None:
        p = self.owner
        path = self.path
        if path == f"/ocpi/{V}/credentials":  # the CPO registers with us, token A
            if not self._authorized(p.accept_token_a):
                return
            body = self._body()
            p._record("POST", path, body, "Credentials")
            p.cpo_token = body["token"]
            token_c = secrets.token_urlsafe(24)
            p.token_b = token_c  # from now on the CPO presents our token C
            self._send({
                "token": token_c, "url": p.versions_url,
                "roles": [{"role": "EMSP", "business_details": {"name": "Peer eMSP"},
                           "party_id": PARTY, "country_code": CC}],
            })  # fmt: skip
            return
        if not self._authorized():
            return
        body = self._body()
        if path.startswith(f"/ocpi/{V}/commands/"):
            p._record("POST", path, body, "CommandResult")
        elif path == f"/ocpi/{V}/cdrs":
            p._record("POST", path, body, "CDR")
        else:
            self._send(None, 2000, 404)
            return
        self._send()

    def do_PUT(self) -> None:
        if not self._authorized():
            return
        body, path = self._body(), self.path
        parts = path.split("/")
        if path.startswith(f"/ocpi/{V}/locations/"):
            kind = "Location" if len(parts) == 7 else "EVSE"
        elif path.startswith(f"/ocpi/{V}/sessions/"):
            kind = "Session"
        elif path.startswith(f"/ocpi/{V}/tariffs/"):
            kind = "Tariff"
        else:
            self._send(None, 2000, 404)
            return
        self.owner._record("PUT", path, body, kind)
        self._send()

    def do_DELETE(self) -> None:
        if not self._authorized():
            return
        if not self.path.startswith(f"/ocpi/{V}/tariffs/"):
            self._send(None, 2000, 404)
            return
        self.owner._record("DELETE", self.path, None, None)
        self._send()

    def do_PATCH(self) -> None:
        if not self._authorized():
            return
        body, path = self._body(), self.path
        if path.startswith(f"/ocpi/{V}/locations/"):
            kind = "EvseStatusPatch"
        elif path.startswith(f"/ocpi/{V}/sessions/"):
            kind = "SessionPatch"
        else:
            self._send(None, 2000, 404)
            return
        self.owner._record("PATCH", path, body, kind)
        self._send()


class OcpiClient:
    """The eMSP calling the CPO: envelope decoded, headers kept, errors returned."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = None,
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        url = path if path.startswith("http") else self.base + path
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"X-Request-ID": "req-1", "X-Correlation-ID": "corr-1"}
        tok = token or self.token
        if tok:
            headers["Authorization"] = auth(tok)
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return (
                    resp.status,
                    {k.lower(): v for k, v in resp.headers.items()},
                    json.loads(resp.read()),
                )
        except urllib.error.HTTPError as err:
            return (
                err.code,
                {k.lower(): v for k, v in err.headers.items()},
                json.loads(err.read() or b"{}"),
            )
