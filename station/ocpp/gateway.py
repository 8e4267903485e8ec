"""The asyncio edge of the OCPP gateway: a WebSocket server for chargers, one
:class:`station.host.Host` for the broker side.

Theory of operation
-------------------
Every point of the chargers file (a charger, or one connector of a multi-connector
charger) is an :class:`~station.ocpp.point.OcppPoint`, and all of them are hosted by
one :class:`~station.host.Host`, as ``ev-station fleet`` hosts many simulated
stations, but on ONE ZeroMQ connection for every point (``SharedLink``: a hello per
point, the point named in every message), one UDP socket, the host's completion
resends and reconnects. A point is silent towards the broker (no hello, datagram)
while its charger is not connected, so the broker sees it go offline and applies its
own rules.

Chargers connect to ``/ocpp/<chargePointId>`` with subprotocol ``ocpp2.0.1`` or
``ocpp1.6`` (per charger, or the newest offered). The HTTP upgrade is checked first
(:meth:`Gateway._authorize`): unknown id, wrong password or (profile 3) a client
certificate whose CN is not the id -> 401, no allowed subprotocol offered -> 400.
Each accepted connection gets a :class:`~station.ocpp.v16.Charger16` or
:class:`~station.ocpp.v201.Charger201` (the ``ocpp`` package's ChargePoint, which
validates every payload against the version's JSON schemas, both ways), carrying
the points of the charger's connectors. One loop runs everything.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import hmac
import logging
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final

import ocpp.messages
from ocpp.exceptions import OCPPError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from common.ports import OCPP_PORT, VEHICLE_PORT
from station.host import Host, HostConfig
from station.links import Link
from station.ocpp import mapping, mapping201
from station.ocpp.chargers_file import ChargerSpec
from station.ocpp.guard import IdTags, LoginGuard
from station.ocpp.logs import warn
from station.ocpp.passwords import DEFAULT_ITERATIONS, verify_password
from station.ocpp.point import (
    OcppPoint,
    Transaction,
    transaction_from_record,
    transaction_record,
)
from station.ocpp.state import GatewayState
from station.ocpp.v16 import Charger16
from station.ocpp.v201 import Charger201
from station.ocpp.walkin import WalkIns, WalkInSettings
from station.sim import Step

log = logging.getLogger("station.ocpp")

# The ocpp package validates each payload on a worker thread by default: a thread hop per
# message (two per heartbeat). Inline validation of these small payloads is cheaper and
# keeps the loop's order; measured in tests/bench/bench_ocpp.py (docs/ocpp.md).
ocpp.messages.ASYNC_VALIDATION = False

SUBPROTOCOLS: Final = (mapping201.SUBPROTOCOL, mapping.SUBPROTOCOL)  # preferred first
PATH_PREFIX: Final = "/ocpp/"
CALL_TIMEOUT_S: Final = 10.0  # an OCPP call the charger does not answer in time fails
MAX_MESSAGE: Final = 64 * 1024  # OCPP 1.6 messages are small; anything bigger is hostile
SWEEP_S: Final = 1.0


@dataclass
class GatewayConfig:
    host: str = "0.0.0.0"
    port: int = OCPP_PORT
    heartbeat_interval_s: int = 60  # told to chargers in BootNotification
    meter_interval_s: int = 10  # MeterValueSampleInterval set at boot
    ssl_context: ssl.SSLContext | None = None
    vehicle_port: int = VEHICLE_PORT  # walk-in sessions arrive at the broker as vehicles
    walkin_payment: str = "Débito em conta"
    walkin_capacity_kwh: float = 100.0
    id_tags: IdTags = field(default_factory=IdTags)  # the idTags that may walk in


class Gateway:
    """Chargers on one side, the broker on the other (see module doc)."""

    def __init__(
        self,
        specs: list[ChargerSpec],
        config: GatewayConfig,
        host_config: HostConfig,
        state: GatewayState,
        link_factory: Callable[[list[str]], Link],
    ) -> None:
        self.config = config
        self.state = state
        self.points = {spec.id: OcppPoint(spec, self) for spec in specs}
        self.chargers: dict[str, list[OcppPoint]] = {}  # chargePointId -> its points
        for point in self.points.values():
            self.chargers.setdefault(point.spec.charger, []).append(point)
        walk_in = WalkInSettings(
            config.vehicle_port, config.walkin_payment, config.walkin_capacity_kwh
        )
        self.walk_ins = WalkIns(self.new_id, host_config.broker, walk_in, config.id_tags)
        self.login_guard = LoginGuard(_iterations(specs))
        host_config = dataclasses.replace(host_config, quiet_until_welcome=True)
        self.host = Host(
            # (ignored below) OcppPoint is a Charger by duck typing, not by inheritance
            list(self.points.values()),  # type: ignore[arg-type]
            host_config,
            link_factory,
            out=log.debug,  # the gateway prints its own ready line
            boot_id=state.boot_id,
            seq_start=int(time.time() * 1000),  # above any seq sent before a restart
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dirty = False
        self._after_write: list[Callable[[], None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._verified: dict[str, bytes] = {}  # charger id -> SHA-256 of its last good password
        self._server: Server | None = None
        self._restore(time.time())

    def _restore(self, now: float) -> None:
        records = list(self.state.transactions.values())
        self.state.transactions = {}  # keyed again as today (files of 1.6-only gateways)
        for rec in records:
            point = self.points.get(str(rec.get("point_id")))
            if point is not None:
                point.session = transaction_from_record(rec)
                key = _tx_key(point.point_id, point.session.transaction_id)
                self.state.transactions[key] = rec
        for msg in self.state.completions.values():
            point = self.points.get(str(msg.get("point_id")))
            if point is not None:
                point.restore_completion({k: v for k, v in msg.items() if k != "point_id"}, now)
        if self.state.restored:
            log.info(
                "state restored: %d open transactions, %d unacknowledged completions",
                len(self.state.transactions),
                len(self.state.completions),
            )

    # --- services for the points ------------------------------------------------------

    async def call(self, point: OcppPoint, payload: Any, timeout: float | None = None) -> Any:
        conn = point.conn
        if conn is None:
            return None
        try:
            return await asyncio.wait_for(conn.call(payload), timeout)
        except (TimeoutError, ConnectionClosed, OCPPError) as exc:
            name = type(payload).__name__
            warn(point.point_id, "call", "%s: %s failed: %s", point.point_id, name, exc)
            return None

    async def configure(self, point: OcppPoint) -> None:
        """Set what the mapping needs of a charger that booted (docs/ocpp.md)."""
        dialect = point.dialect
        for payload in dialect.configuration_calls(self.config.meter_interval_s):
            result = await self.call(point, payload)
            refused = dialect.configuration_refusals(result) if result is not None else []
            if refused:  # (no answer: the failed call was logged)
                cid = point.spec.charger
                name = type(payload).__name__
                warn(cid, "config", "%s: %s refused: %s", cid, name, "; ".join(refused))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def emit(self, point: OcppPoint, step: Step) -> None:
        self.host.deliver(point.point_id, step, time.time())

    def new_id(self) -> int:
        return self.state.new_id()

    def save_transaction(self, tx: Transaction | None, tx_id: int | str, point_id: str) -> None:
        if tx is None:
            self.state.transactions.pop(_tx_key(point_id, tx_id), None)
        else:
            self.state.transactions[_tx_key(point_id, tx_id)] = transaction_record(tx, point_id)
        self.persist()

    def save_completion(self, session_id: str, msg: dict[str, Any] | None, point_id: str) -> None:
        if msg is None:
            self.state.completions.pop(session_id, None)
        else:
            self.state.completions[session_id] = {**msg, "point_id": point_id}
        self.persist()

    def persist(self, then: Callable[[], None] | None = None) -> None:
        """Write the state file soon (off the loop; the changes of many chargers in one
        write) and call ``then`` once what is in it now is durable."""
        if then is not None:
            self._after_write.append(then)
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def durable(self) -> None:
        """Wait until every change made so far is in the state file."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        self.persist(resolve)
        await done

    async def _write_loop(self) -> None:
        while self._dirty:
            self._dirty = False
            callbacks, self._after_write = self._after_write, []
            await asyncio.to_thread(self.state.write, self.state.snapshot())
            for callback in callbacks:
                callback()

    def came_online(self, point: OcppPoint) -> None:
        now = time.time()
        log.info("%s: charger online", point.point_id)
        self.host.rehello(point.point_id, now)
        self.host.deliver(point.point_id, Step(changed=True), now)

    # --- the WebSocket side -----------------------------------------------------------

    def _charger_of(self, request: Request) -> list[OcppPoint] | None:
        path = request.path.split("?", 1)[0]
        return self.chargers.get(path[len(PATH_PREFIX) :]) if path.startswith(PATH_PREFIX) else None

    async def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if not path.startswith(PATH_PREFIX):
            return connection.respond(HTTPStatus.NOT_FOUND, "use /ocpp/<chargePointId>\n")
        charger_id = path[len(PATH_PREFIX) :]
        points = self.chargers.get(charger_id)
        spec = points[0].spec if points else None
        guard = self.login_guard
        address = _address(connection)
        if guard.blocked(address):
            guard.log_refusal(f"charger login from {address} refused: too many failures")
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "too many failed logins\n")
        if spec is None:
            password = _basic_password(request.headers, charger_id)
            if password is not None:
                await guard.dummy_check(password)  # an unknown id costs what a real check does
        if spec is None or not await self._authenticated(spec, connection, request):
            guard.failed(address)
            guard.log_refusal(
                f"charger {charger_id[:64]!r} from {address} refused: unknown id or wrong "
                "credentials"
            )
            response = connection.respond(
                HTTPStatus.UNAUTHORIZED, "unknown charger or bad credentials\n"
            )
            if spec is None or spec.security_profile != 3:
                response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
            return response
        offered = [
            p.strip()
            for p in ",".join(request.headers.get_all("Sec-WebSocket-Protocol")).split(",")
        ]
        if _subprotocol(spec.ocpp, offered) is None:
            wanted = {"auto": "ocpp2.0.1 or ocpp1.6", "1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
            text = f"subprotocol {wanted[spec.ocpp]} required\n"
            return connection.respond(HTTPStatus.BAD_REQUEST, text)
        return None

    async def _authenticated(
        self, spec: ChargerSpec, connection: ServerConnection, request: Request
    ) -> bool:
        """Security profile 3: a verified client certificate whose CN is the charger id
        (the TLS handshake checked it against ``--client-ca``); else HTTP Basic."""
        cert = _peer_cert(connection)
        if spec.security_profile == 3 or cert is not None:
            return cert is not None and _common_name(cert) == spec.charger
        password = _basic_password(request.headers, spec.charger)
        return password is not None and await self._check(spec, password)

    async def _check(self, spec: ChargerSpec, password: str) -> bool:
        if spec.password_hash is None:
            return False
        quick = hashlib.sha256(password.encode("utf-8")).digest()
        known = self._verified.get(spec.charger)
        if known is not None and hmac.compare_digest(known, quick):
            return True
        # PBKDF2 releases the GIL: check on a worker thread, keep the loop serving
        ok = await asyncio.to_thread(verify_password, password, spec.password_hash)
        if ok:
            self._verified[spec.charger] = quick
        return ok

    def _select(self, connection: ServerConnection, offered: Sequence[str]) -> Any:
        points = self._charger_of(connection.request) if connection.request else None
        return _subprotocol(points[0].spec.ocpp if points else "auto", list(offered))

    async def _serve_charger(self, ws: ServerConnection) -> None:
        points = self._charger_of(ws.request) if ws.request else None
        assert points is not None  # _authorize let only known chargers through
        kind = Charger201 if ws.subprotocol == mapping201.SUBPROTOCOL else Charger16
        conn = kind(points, self, ws, CALL_TIMEOUT_S)
        old = points[0].conn
        for p in points:
            p.connected(conn)
        if old is not None:
            log.info("%s: a new connection replaces the old one", conn.id)
            self.spawn(old.ws.close(1000, "replaced by a new connection"))
        try:
            await conn.start()
        except ConnectionClosed:
            pass
        finally:
            for p in points:
                p.disconnected(conn)

    async def _sweep(self) -> None:
        """Close connections of chargers silent for three heartbeat intervals."""
        limit = 3 * self.config.heartbeat_interval_s
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.time()
            for points in self.chargers.values():
                point = points[0]
                conn = point.conn
                if conn is not None and point.spoke and now - point.heard_at > limit:
                    warn(conn.id, "silent", "%s: silent for %.0f s, closing", conn.id, limit)
                    self.spawn(conn.ws.close(1001, "silent"))

    async def run(self, ready: Callable[[str], None]) -> None:
        cfg = self.config
        async with serve(
            self._serve_charger,
            cfg.host,
            cfg.port,
            # (ignored below) websockets types subprotocols as Subprotocol (a NewType of str)
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            select_subprotocol=self._select,
            process_request=self._authorize,
            ssl=cfg.ssl_context,
            max_size=MAX_MESSAGE,
            backlog=4096,  # a reconnect storm of thousands of chargers
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
        ) as server:
            self._server = server
            port = next(iter(server.sockets)).getsockname()[1]
            scheme = "wss" if cfg.ssl_context is not None else "ws"
            sweep = asyncio.get_running_loop().create_task(self._sweep())
            host_task = asyncio.get_running_loop().create_task(self.host.run())
            await asyncio.sleep(0)  # the host creates its sockets
            ready(
                f"ocpp gateway ready: {scheme}://{cfg.host}:{port}/ocpp/<id>, "
                f"{len(self.points)} chargers, broker {self.host.config.broker}, "
                f"boot {self.state.boot_id}"
            )
            try:
                await host_task
            finally:
                sweep.cancel()
                await self.walk_ins.close()

    def request_stop(self) -> None:
        self.host.request_stop()


def _address(connection: ServerConnection) -> str:
    """The peer's IP address (the key of the failed-login count)."""
    peer = connection.remote_address
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


def _iterations(specs: list[ChargerSpec]) -> int:
    """The PBKDF2 cost of the chargers' hashes (the dummy check costs the same)."""
    for spec in specs:
        try:
            return int((spec.password_hash or "").split("$")[1])
        except (IndexError, ValueError):
            continue
    return DEFAULT_ITERATIONS


def _subprotocol(version: str, offered: list[str]) -> str | None:
    """The subprotocol for a charger configured as ``version`` that offers ``offered``:
    its own, or with ``auto`` the newest offered."""
    if version == "auto":
        return next((p for p in SUBPROTOCOLS if p in offered), None)
    wanted = mapping201.SUBPROTOCOL if version == mapping201.VERSION else mapping.SUBPROTOCOL
    return wanted if wanted in offered else None


def _peer_cert(connection: ServerConnection) -> dict[str, Any] | None:
    """The client certificate the TLS handshake verified, if any."""
    ssl_object = connection.transport.get_extra_info("ssl_object")
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    return cert or None


def _common_name(cert: dict[str, Any]) -> str | None:
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _tx_key(point_id: str, tx_id: int | str) -> str:
    return f"{point_id}/{tx_id}"


def _basic_password(headers: Headers, charger_id: str) -> str | None:
    value = headers.get("Authorization")
    if value is None or not value.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or user != charger_id:
        return None
    return password
