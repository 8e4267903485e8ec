"""The asyncio edge of the OCPP gateway: a WebSocket server for chargers, one
:class:`station.host.Host` for the broker side.

Theory of operation
-------------------
Every charger of the chargers file is an :class:`~station.ocpp.point.OcppPoint`, and
all of them are hosted by one :class:`~station.host.Host`, exactly as ``ev-station
fleet`` hosts many simulated stations: one ZeroMQ link (one connection per point id),
one UDP socket, the host's heartbeats, completion resends and reconnects. A point is
silent towards the broker (no hello, datagram or heartbeat) while its charger is not
connected, so the broker sees it go offline and applies its own rules.

Chargers connect to ``/ocpp/<chargePointId>`` with subprotocol ``ocpp1.6``. The HTTP
upgrade is checked first (:meth:`Gateway._authorize`): unknown id or wrong password
-> 401, no ``ocpp1.6`` subprotocol offered -> 400. Each accepted connection gets a
:class:`ChargerConnection` (the ``ocpp`` package's ChargePoint, which validates every
payload against the OCPP 1.6 JSON schemas, both ways). One loop runs everything.
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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import ocpp.messages
from ocpp.exceptions import OCPPError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, RegistrationStatus
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from common.timeutil import format_timestamp
from station.host import Host, HostConfig
from station.links import Link
from station.ocpp import frames, mapping
from station.ocpp.chargers_file import ChargerSpec
from station.ocpp.logs import warn
from station.ocpp.passwords import verify_password
from station.ocpp.point import (
    OcppPoint,
    Transaction,
    transaction_from_record,
    transaction_record,
)
from station.ocpp.state import GatewayState
from station.ocpp.walkin import WalkIns
from station.sim import Step

log = logging.getLogger("station.ocpp")

# The ocpp package validates each payload on a worker thread by default: a thread hop per
# message (two per heartbeat). Inline validation of these small payloads is cheaper and
# keeps the loop's order; measured in tests/bench/bench_ocpp.py (docs/ocpp.md).
ocpp.messages.ASYNC_VALIDATION = False

SUBPROTOCOL: Final = "ocpp1.6"
PATH_PREFIX: Final = "/ocpp/"
CALL_TIMEOUT_S: Final = 10.0  # an OCPP call the charger does not answer in time fails
MAX_MESSAGE: Final = 64 * 1024  # OCPP 1.6 messages are small; anything bigger is hostile
SWEEP_S: Final = 1.0


@dataclass
class GatewayConfig:
    host: str = "0.0.0.0"
    port: int = 9000
    heartbeat_interval_s: int = 60  # told to chargers in BootNotification
    meter_interval_s: int = 10  # MeterValueSampleInterval set at boot
    ssl_context: ssl.SSLContext | None = None
    vehicle_port: int = 8081  # walk-in sessions arrive at the broker as vehicles
    walkin_payment: str = "Débito em conta"
    walkin_capacity_kwh: float = 100.0


class ChargerConnection(ChargePoint):  # type: ignore[misc]
    """One connected charger: OCPP handlers that hand validated payloads to its point."""

    def __init__(self, point: OcppPoint, gateway: Gateway, ws: ServerConnection) -> None:
        super().__init__(point.point_id, ws, response_timeout=CALL_TIMEOUT_S)
        self.point = point
        self.gateway = gateway
        self.ws = ws

    async def route_message(self, raw_msg: str | bytes) -> None:
        self.point.heard(time.time())  # every message is a sign of life
        await route_checked(self, raw_msg, "1.6")

    @on(Action.boot_notification)
    def on_boot_notification(self, **_: Any) -> call_result.BootNotification:
        self.point.on_boot()
        return call_result.BootNotification(
            current_time=_now_iso(),
            interval=self.gateway.config.heartbeat_interval_s,
            status=RegistrationStatus.accepted,
        )

    @after(Action.boot_notification)
    def after_boot_notification(self, **_: Any) -> None:
        self.gateway.spawn(self.gateway.configure(self.point))

    @on(Action.heartbeat)
    def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=_now_iso())

    @on(Action.status_notification)
    def on_status_notification(
        self, connector_id: int, status: str, **_: Any
    ) -> call_result.StatusNotification:
        self.point.on_status(connector_id, status)
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(
        self, connector_id: int, meter_value: Any, transaction_id: int | None = None, **_: Any
    ) -> call_result.MeterValues:
        self.point.on_meter_values(transaction_id, meter_value)
        return call_result.MeterValues()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **_: Any) -> call_result.Authorize:
        status = self.gateway.walk_ins.authorize(self.point, id_tag)
        return call_result.Authorize(id_tag_info={"status": status})

    @on(Action.start_transaction)
    async def on_start_transaction(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any
    ) -> call_result.StartTransaction:
        now = time.time()
        tx_id = self.point.on_start_transaction(connector_id, id_tag, meter_start, timestamp, now)
        status = "Accepted"
        if tx_id is None:
            tx_id, status = await self.gateway.walk_ins.start(
                self.point, id_tag, meter_start, timestamp
            )
        return call_result.StartTransaction(transaction_id=tx_id, id_tag_info={"status": status})

    @on(Action.stop_transaction)
    async def on_stop_transaction(
        self,
        meter_stop: int,
        timestamp: str,
        transaction_id: int,
        reason: str | None = None,
        id_tag: str | None = None,
        **_: Any,
    ) -> call_result.StopTransaction:
        if not self.point.on_stop_transaction(
            transaction_id, meter_stop, timestamp, reason, time.time()
        ):
            pid = self.point.point_id
            warn(pid, "stop", "%s: StopTransaction for unknown transaction %s accepted and ignored",
                 pid, transaction_id)  # fmt: skip
        await self.gateway.durable()  # answered once the completion survives a crash
        info = {"status": "Accepted"} if id_tag is not None else None
        return call_result.StopTransaction(id_tag_info=info)

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status(self, **_: Any) -> call_result.DiagnosticsStatusNotification:
        return call_result.DiagnosticsStatusNotification()


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
        self.walk_ins = WalkIns(self, host_config.broker, config)
        host_config = dataclasses.replace(host_config, quiet_until_welcome=True)
        self.host = Host(
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
        for rec in self.state.transactions.values():
            point = self.points.get(str(rec.get("point_id")))
            if point is not None:
                point.session = transaction_from_record(rec)
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

    async def call(self, point: OcppPoint, payload: Any) -> Any:
        conn = point.conn
        if conn is None:
            return None
        try:
            return await conn.call(payload)
        except (TimeoutError, ConnectionClosed, OCPPError) as exc:
            name = type(payload).__name__
            warn(point.point_id, "call", "%s: %s failed: %s", point.point_id, name, exc)
            return None

    async def configure(self, point: OcppPoint) -> None:
        """Set what the mapping needs of a charger that booted (docs/ocpp.md)."""
        for key, value in mapping.configuration(self.config.meter_interval_s):
            result = await self.call(point, call.ChangeConfiguration(key=key, value=value))
            status = getattr(result, "status", None)
            if status not in ("Accepted", "RebootRequired"):
                pid = point.point_id
                warn(pid, "config", "%s: ChangeConfiguration %s answered %s", pid, key, status)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def emit(self, point: OcppPoint, step: Step) -> None:
        self.host.deliver(point.point_id, step, time.time())

    def new_id(self) -> int:
        return self.state.new_id()

    def save_transaction(self, tx: Transaction | None, tx_id: int, point_id: str) -> None:
        if tx is None:
            self.state.transactions.pop(tx_id, None)
        else:
            self.state.transactions[tx_id] = transaction_record(tx, point_id)
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

    async def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if not path.startswith(PATH_PREFIX):
            return connection.respond(HTTPStatus.NOT_FOUND, "use /ocpp/<chargePointId>\n")
        charger_id = path[len(PATH_PREFIX) :]
        point = self.points.get(charger_id)
        password = _basic_password(request.headers, charger_id)
        if point is None or password is None or not await self._check(point, password):
            warn(charger_id[:64], "auth", "charger %r refused: unknown id or wrong password",
                 charger_id[:64])  # fmt: skip
            response = connection.respond(
                HTTPStatus.UNAUTHORIZED, "unknown charger or bad password\n"
            )
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
            return response
        offered = ",".join(request.headers.get_all("Sec-WebSocket-Protocol"))
        if SUBPROTOCOL not in [p.strip() for p in offered.split(",")]:
            return connection.respond(HTTPStatus.BAD_REQUEST, "subprotocol ocpp1.6 required\n")
        return None

    async def _check(self, point: OcppPoint, password: str) -> bool:
        quick = hashlib.sha256(password.encode("utf-8")).digest()
        known = self._verified.get(point.point_id)
        if known is not None and hmac.compare_digest(known, quick):
            return True
        # PBKDF2 releases the GIL: check on a worker thread, keep the loop serving
        ok = await asyncio.to_thread(verify_password, password, point.spec.password_hash)
        if ok:
            self._verified[point.point_id] = quick
        return ok

    async def _serve_charger(self, ws: ServerConnection) -> None:
        charger_id = ws.request.path.split("?", 1)[0][len(PATH_PREFIX) :] if ws.request else ""
        point = self.points[charger_id]
        old = point.conn
        conn = ChargerConnection(point, self, ws)
        point.connected(conn)
        if old is not None:
            log.info("%s: a new connection replaces the old one", point.point_id)
            self.spawn(old.ws.close(1000, "replaced by a new connection"))
        try:
            await conn.start()
        except ConnectionClosed:
            pass
        finally:
            point.disconnected(conn)

    async def _sweep(self) -> None:
        """Close connections of chargers silent for three heartbeat intervals."""
        limit = 3 * self.config.heartbeat_interval_s
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.time()
            for point in self.points.values():
                conn = point.conn
                if conn is not None and point.spoke and now - point.heard_at > limit:
                    warn(point.point_id, "silent", "%s: silent for %.0f s, closing",
                         point.point_id, limit)  # fmt: skip
                    self.spawn(conn.ws.close(1001, "silent"))

    async def run(self, ready: Callable[[str], None]) -> None:
        cfg = self.config
        async with serve(
            self._serve_charger,
            cfg.host,
            cfg.port,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
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


async def route_checked(cp: Any, raw: str | bytes, version: frames.Version) -> None:
    """The ``ocpp`` package's routing, with every invalid frame answered as OCPP-J asks
    (:mod:`station.ocpp.frames`) and one throttled log line instead of a traceback."""
    charger = cp.id
    bad = frames.check(raw, version)
    if bad is not None:
        warn(charger, "frame", "%s: invalid frame (%s): %.80r", charger, bad.reason, raw)
        if bad.unique_id is None:
            await cp._connection.close(frames.CLOSE_PROTOCOL_ERROR, bad.reason[:120])
        else:
            await cp._send(bad.call_error())
        return
    msg = ocpp.messages.unpack(raw)
    if msg.message_type_id != frames.CALL:
        cp._response_queue.put_nowait(msg)
        return
    try:
        await cp._handle_call(msg)
    except OCPPError as error:
        warn(charger, "frame", "%s: %s refused: %s", charger, msg.action, error)
        answer = msg.create_call_error(error)
        answer.error_code = frames.error_code(answer.error_code, version)
        await cp._send(answer.to_json())


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


def _now_iso() -> str:
    return format_timestamp(time.time())
