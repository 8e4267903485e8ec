"""A real broker, real stations and the web console, for the web console's tests.

:func:`web_stack` starts ``ev-broker serve`` (short offline window and
grace period), ``ev-station run`` for each point, and ``ev-broker web`` with a
known token, each on free ports in a temp folder; everything is stopped by
pid at the end, also on failure. :class:`WebStack` has the small HTTP
helpers the tests share (token as a bearer header).
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.procs import BrokerPorts, Proc, broker_ports, free_port, start, start_broker
from tests.support.raw_clients import Vehicle, wait_for

TOKEN = "test-token-0123456789"
BROKER_OPTS = ("--offline-after", "1", "--offline-grace", "3", "--hold-minutes", "5")
HTTP_TIMEOUT_S = 15.0


@dataclass
class WebStack:
    ports: BrokerPorts
    web_port: int
    tmp: Path
    broker: Proc
    web: Proc
    stations: dict[str, Proc] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        body: Any = None,
        headers: dict[str, str] | None = None,
        token: str | None = TOKEN,
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body; error statuses are returned too."""
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        opener = urllib.request.build_opener(_NoRedirect())
        try:
            with opener.open(req, timeout=HTTP_TIMEOUT_S) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def get_json(self, path: str) -> Any:
        status, _, body = self.request(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def point(self, point_id: str) -> dict[str, Any]:
        return dict(self.get_json(f"/api/points/{point_id}"))

    def add_station(self, point_id: str, lat: float, lon: float, *extra: str) -> Proc:
        proc = start(
            [
                "python", "-m", "station", "run", "--id", point_id,
                "--lat", str(lat), "--lon", str(lon),
                "--status-port", str(self.ports.status), "--station-port", str(self.ports.station),
                "--interval", "0.5", *self.ports.cred_args("station"), *extra,
            ]
        )  # fmt: skip
        self.stations[point_id] = proc
        return proc

    def wait_online(self, *point_ids: str, timeout: float = 30.0) -> None:
        def online() -> bool:
            rows = {p["id"]: p for p in self.get_json("/api/points")}
            return all(rows.get(pid, {}).get("online") for pid in point_ids)

        wait_for(online, timeout, f"points {point_ids} online in the console", interval=0.2)

    def charge(
        self, vehicle_id: str, point_id: str, battery: float = 20, target: float = 60
    ) -> str:
        """A walk-in session at ``point_id``; returns its session id once started."""
        deadline = time.monotonic() + 30
        while True:
            with contextlib.closing(Vehicle(self.ports.vehicle, vehicle_id)) as v:
                reply = v.ask(
                    "chegada",
                    id_ponto_recarga=point_id,
                    nivel_bateria=battery,
                    nivel_carregar=target,
                    metodo_pagamento="Pix",
                )
            data = reply["data"]
            if data.get("code") == "started":
                return str(data["session_id"])
            assert time.monotonic() < deadline, f"charging at {point_id} never started: {data}"
            time.sleep(0.3)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def start_web(ports: BrokerPorts, web_port: int, role: str, *extra: str) -> Proc:
    """``ev-broker web`` on ``web_port`` with the broker's ``role`` credential, once ready."""
    web = start(
        [
            "python", "-m", "broker", "web", "--events-port", str(ports.events),
            "--history-port", str(ports.history), "--port", str(web_port),
            *ports.cred_args(role), *extra,
        ],
        env={"EV_WEB_TOKEN": TOKEN},
    )  # fmt: skip
    try:
        web.read_until("web console ready", timeout=30)
    except BaseException:
        web.stop()
        raise
    return web


@contextlib.contextmanager
def web_stack(tmp: Path, *web_extra: str) -> Iterator[WebStack]:
    """Broker + web console (token :data:`TOKEN`); add stations with ``add_station``."""
    ports = broker_ports()
    web_port = free_port()
    broker = start_broker(ports, str(tmp / "broker.db"), *BROKER_OPTS)
    web: Proc | None = None
    stack: WebStack | None = None
    try:
        web = start_web(ports, web_port, "operator", *web_extra)
        stack = WebStack(ports, web_port, tmp, broker, web)
        yield stack
    finally:
        if stack is not None:
            for proc in stack.stations.values():
                proc.stop()
        if web is not None:
            web.stop()
        broker.stop()
