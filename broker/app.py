"""The broker service: wires the pure core to its edges, the store and a timer.

Theory of operation
-------------------
Every input (a vehicle request, a status datagram, a station message, a
connection that starts or ends, the timer) becomes one synchronous core call
with the current wall-clock time. The effects it returns are queued, and a
flush is scheduled with ``call_soon``, so every core call of one loop turn
shares one flush:

1. every :class:`Persist` and :class:`Publish` of the batch is written to
   SQLite in ONE transaction and committed;
2. only then replies, pushes, bus events and station commands go out, in the
   order the core produced them ("a reply confirming a change is sent only
   after it is committed", at the cost of one commit per loop turn, not per
   request);
3. the single timer (one ``TimerHandle``) is moved to ``core.next_due()``.

Security is on unless ``insecure``: the broker's CURVE key pair comes from
``broker.key`` in the keys folder, the live credentials from the credential
table (re-read every second), pyzmq's ZAP handler admits stations on 5555 and
consumers on 5556/5557, and the status edge takes only signed datagrams (or
unsigned ones from a ``legacy-station``'s address). ``insecure`` turns all of
that off and logs a warning at start and every minute.

If a commit fails, nothing of the batch is sent and the broker stops with a
non-zero exit: a confirmation that is not durable must never go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
import zmq.asyncio

from broker.auth import Authenticator, Keyring, Rejections, Security
from broker.core import Core, CoreConfig
from broker.core.effects import (
    Effect,
    Persist,
    Publish,
    Push,
    Rejected,
    Reply,
    SendStation,
    needs_commit,
)
from broker.core.vehicle_auth import MAX_REGISTRATIONS, AuthMode
from broker.credentials import (
    CredentialTable,
    broker_keys,
    credentials_db_for,
    ensure,
    keys_dir_for,
)
from broker.edges.bus_pub import BusPublisher
from broker.edges.gateways_zmq import REMOTE_BASE, GatewaysEdge, load_committed, load_starts
from broker.edges.history import HistoryServer
from broker.edges.http import HttpServer
from broker.edges.reply_order import Slot
from broker.edges.stations_zmq import StationsEdge
from broker.edges.status_udp import StatusServer
from broker.edges.vehicles_tcp import PushTarget, VehicleServer
from broker.gateway.supervisor import Supervisor, reserve_port
from broker.gateway.wire import Welcome
from broker.limits import Limits
from broker.metrics import BrokerMetrics, add_state_metrics
from broker.store import Store
from common.errors import InternalError, StoreError
from common.messages import (
    BusEvent,
    HistoryRemoveSite,
    HistorySetSite,
    HistorySites,
    HistoryTariffs,
    StationToBroker,
    StatusDatagram,
    VehicleRequest,
)
from common.oslimits import raise_nofile_limit
from common.ports import (
    EVENTS_PORT,
    HISTORY_PORT,
    HTTP_PORT,
    STATION_PORT,
    STATUS_PORT,
    VEHICLE_PORT,
)

log = logging.getLogger(__name__)

TOKEN_BYTES: Final = 32


@dataclass(frozen=True, slots=True)
class AppConfig:
    """Everything ``ev-broker serve`` can be told; ``core`` holds the rule parameters."""

    host: str = "0.0.0.0"
    internal_host: str = "127.0.0.1"
    vehicle_port: int = VEHICLE_PORT
    status_port: int = STATUS_PORT
    station_port: int = STATION_PORT
    events_port: int = EVENTS_PORT
    history_port: int = HISTORY_PORT
    http_port: int = HTTP_PORT
    #: the ROUTER vehicle gateways connect to (on ``internal_host``); None: none
    gateway_port: int | None = None
    #: local gateway processes (``--gateways``): the core then has no vehicle port
    gateways: int = 0
    #: how long gateways hold requests while the core is away
    core_wait_s: float = 10.0
    db: str = "./var/broker.db"
    core: CoreConfig = field(default_factory=CoreConfig)
    retain_events_s: float | None = None  # None: keep the event log forever
    vehicle_auth: AuthMode = AuthMode.OPEN
    registrations_per_address: int = MAX_REGISTRATIONS  # registrar a minute per address
    limits: Limits = field(default_factory=Limits)
    insecure: bool = False
    keys: str | None = None


PRUNE_EVERY_S: Final = 3600.0  # how often old events are pruned (at most)
MIN_PRUNE_EVERY_S: Final = 0.2


def new_token() -> str:
    """A vehicle token: 32 random bytes, base64url without padding (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


INSECURE_WARNING: Final = (
    "INSECURE: station, status and consumer authentication are OFF (--insecure); "
    "anyone who reaches this broker can act as any station and read every bill"
)
INSECURE_WARN_EVERY_S: Final = 60.0


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class BrokerApp:
    """One running broker: core + store + edges + timer."""

    def __init__(self, config: AppConfig, stop_requested: asyncio.Event | None = None) -> None:
        self.config = config
        self.metrics = BrokerMetrics()
        self.reject = Rejections(self.metrics.rejected)
        self.store = Store(config.db)
        if self.store.tightened:
            log.warning(
                "database files were readable by other users; made them 0600: %s",
                ", ".join(str(p) for p in self.store.tightened),
            )
        self.security: Security | None = None
        try:
            if not config.insecure:
                keys_dir = keys_dir_for(config.db, config.keys)
                keys = broker_keys(keys_dir)
                keyring = Keyring(CredentialTable(credentials_db_for(config.db, keys_dir)))
                self.security = Security(keyring, keys.secret, self.reject)
            self.core = Core(config.core, new_id=new_id)
            records, last_seq = self.store.load()
            self.core.restore(records, last_seq, time.time())
            self.auth = self.core.vehicle_auth(
                config.vehicle_auth, new_token, config.registrations_per_address
            )
            self.auth.restore(records)
            self._committed = load_committed(records)
            self._starts = load_starts(records)
        except BaseException:
            if self.security is not None:
                self.security.keyring.table.close()
            self.store.close()
            raise
        self._pending: list[Effect] = []
        self._reply_slots: dict[int, Slot] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stop_requested = stop_requested if stop_requested is not None else asyncio.Event()
        self.exit_code = 0
        self.ctx: zmq.asyncio.Context | None = None
        self.vehicles = VehicleServer(self, self.metrics, self.auth, config.limits)
        self.status = StatusServer(
            self.on_datagram, self.metrics, self.security, reject=self.reject
        )
        limits = config.limits
        self.http = HttpServer(
            {"/metrics": self._metrics_page, "/healthz": self._health_page},
            max_connections=limits.max_http_connections,
            max_head=limits.max_http_head,
            idle_s=limits.http_idle_s,
            on_reject=lambda reason: self.metrics.rejected.inc("http", reason),
        )
        self.authenticator: Authenticator | None = None
        self._insecure_task: asyncio.Task[None] | None = None
        self.stations: StationsEdge | None = None
        self.bus: BusPublisher | None = None
        self.history: HistoryServer | None = None
        self.gateways: GatewaysEdge | None = None
        self._snapshot_cache: tuple[int, float, dict[str, Any]] | None = None
        self.serving = False
        self._pruner: asyncio.Task[None] | None = None
        self._add_gauges()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every socket, publish ``broker.started``, arm the timer."""
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        raise_nofile_limit()
        self.ctx = zmq.asyncio.Context()
        security = self.security
        if security is not None:
            self.authenticator = Authenticator(self.ctx, security.keyring, self.reject)
            self.authenticator.start()
            security.keyring.on_change(self._credentials_changed)
            security.keyring.start()
        else:
            log.warning(INSECURE_WARNING)
            self._insecure_task = asyncio.create_task(self._warn_insecure(), name="insecure")
        zhost = _zmq_host(cfg.host)
        ihost = _zmq_host(cfg.internal_host)
        self.stations = StationsEdge(
            self.ctx,
            f"tcp://{zhost}:{cfg.station_port}",
            heartbeat_s=cfg.core.heartbeat_s,
            on_message=self.on_station,
            on_unroutable=self.on_unroutable,
            security=security,
            reject=self.reject,
        )
        self.bus = BusPublisher(self.ctx, f"tcp://{ihost}:{cfg.events_port}", security)
        self.history = HistoryServer(
            self.ctx,
            f"tcp://{ihost}:{cfg.history_port}",
            events_since=self.store.events_since,
            snapshot=self._snapshot,
            accounts=self.core.accounts,
            security=security,
            max_events=cfg.limits.history_max_events,
            max_bytes=cfg.limits.history_max_bytes,
            set_availability=self.set_availability,
            tariffs=self.tariffs,
            sites=self.sites_op,
        )
        await self.bus.start()
        await self.history.start()
        if cfg.gateway_port is not None:
            core = cfg.core
            welcome = Welcome(
                GatewaysEdge.boot_id(),
                self.core.last_seq,
                core.queue_capacity,
                core.low_battery,
                core.low_battery_rearm,
            )
            self.gateways = GatewaysEdge(
                self.ctx,
                f"tcp://{ihost}:{cfg.gateway_port}",
                self,
                welcome,
                self._committed,
                security,
            )
            self.gateways.starts = self._starts
            await self.gateways.start()
        await self.stations.start()
        self.status.start(cfg.host, cfg.status_port)
        if not cfg.gateways:
            await self.vehicles.start(cfg.host, cfg.vehicle_port)
        await self.http.start(cfg.internal_host, cfg.http_port)
        self._call(self.core.start)
        self.flush()
        log.info("status socket receive buffer: %d bytes", self.status.rcvbuf)
        # everything restored so far lives as long as the process: keep it out of GC passes
        gc.freeze()
        if cfg.retain_events_s is not None:
            self._pruner = asyncio.create_task(self._prune_loop(), name="prune-events")
        self.serving = True

    async def close(self) -> None:
        """Stop accepting, commit what is pending, close every socket (linger 0)."""
        self.serving = False
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        await self.vehicles.close()
        self.status.close()
        await self.http.close()
        for _ in range(3):  # let connection_lost callbacks run (vehicle.disconnected)
            await asyncio.sleep(0)
        try:
            self.flush()
        except StoreError:
            log.exception("final commit failed")
        if self._timer is not None:
            self._timer.cancel()
        for edge in (self.gateways, self.stations, self.history, self.bus):
            if edge is not None:
                await edge.close()
        if self._insecure_task is not None:
            self._insecure_task.cancel()
        if self.security is not None:
            await self.security.keyring.close()
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
            self.ctx = None
        self.store.close()

    # --- event retention -----------------------------------------------------------------

    def prune_events(self, now: float) -> int:
        """Delete events older than the retention window; how many were deleted."""
        keep_s = self.config.retain_events_s
        if keep_s is None:
            return 0
        deleted = self.store.prune_events(now - keep_s)
        if deleted:
            self.metrics.pruned.inc(amount=deleted)
            log.info("pruned %d events older than %.6g days", deleted, keep_s / 86400.0)
        return deleted

    async def _prune_loop(self) -> None:
        keep_s = self.config.retain_events_s or PRUNE_EVERY_S
        every = min(PRUNE_EVERY_S, max(MIN_PRUNE_EVERY_S, keep_s / 4))
        while True:
            try:
                self.prune_events(time.time())
            except StoreError as exc:
                log.error("%s", exc.message)
            await asyncio.sleep(every)

    def request_stop(self, exit_code: int = 0) -> None:
        self.exit_code = max(self.exit_code, exit_code)
        self.stop_requested.set()

    async def _warn_insecure(self) -> None:
        while True:
            await asyncio.sleep(INSECURE_WARN_EVERY_S)
            log.warning(INSECURE_WARNING)

    def _credentials_changed(self, gone: set[str]) -> None:
        """A revoked consumer must lose the bus too: make every subscriber authenticate again."""
        if gone and self.bus is not None and self._loop is not None:
            self._loop.create_task(self.bus.rebind(), name="bus-rebind")

    # --- inputs ----------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> list[Effect]:
        effects: list[Effect] = fn(*args, time.time())
        if effects:
            self._pending.extend(effects)
            self._schedule_flush()
        return effects

    def _snapshot(self) -> dict[str, Any]:
        """The core's snapshot; gateways starting together share one per seq and second."""
        now = time.time()
        cached = self._snapshot_cache
        if cached is not None and cached[0] == self.core.last_seq and now - cached[1] < 1.0:
            return cached[2]
        snap = self.core.snapshot(now)
        self._snapshot_cache = (self.core.last_seq, now, snap)
        return snap

    def set_availability(self, point_id: str, available: bool, reason: str, by: str) -> int:
        """An operator's out-of-service change: the seq after it, once committed.

        Raises the core's refusal (EVError), or InternalError when the commit fails.
        """
        seq, effects = self.core.set_availability(point_id, available, reason, by, time.time())
        if effects:
            self._pending.extend(effects)
            try:
                self.flush()
            except StoreError as exc:
                log.critical("cannot commit, stopping: %s", exc.message)
                self.request_stop(1)
                raise InternalError("internal: the change could not be committed") from exc
            log.info(
                "point %s %s by %s%s",
                point_id,
                "back in service" if available else "out of service",
                by,
                f": {reason}" if not available else "",
            )
        return seq

    def sites_op(
        self, request: HistorySites | HistorySetSite | HistoryRemoveSite, by: str
    ) -> dict[str, Any]:
        """The history ops on sites (energy.md); a change is answered after its commit.

        Raises the core's refusal (SiteRefused), or InternalError when the commit fails.
        """
        now = time.time()
        if isinstance(request, HistorySites):
            return self.core.sites()
        if isinstance(request, HistorySetSite):
            reply, effects = self.core.set_site(
                request.name, request.limit_kw, request.points, request.min_kw, by, now
            )
        else:
            reply, effects = self.core.remove_site(request.name, by, now)
        if effects:
            self._pending.extend(effects)
            try:
                self.flush()
            except StoreError as exc:
                log.critical("cannot commit, stopping: %s", exc.message)
                self.request_stop(1)
                raise InternalError("internal: the change could not be committed") from exc
            log.info("site %s %s by %s", request.name, "set" if "site" in reply else "removed", by)
        return reply

    def tariffs(self, request: HistoryTariffs, by: str) -> dict[str, Any]:
        """An operator's tariff request; the reply is made after the commit."""
        reply, effects = self.core.tariffs(
            request.action, request.tariffs, request.tariff_id, request.points, by, time.time()
        )
        if effects:
            self._pending.extend(effects)
            try:
                self.flush()
            except StoreError as exc:
                log.critical("cannot commit, stopping: %s", exc.message)
                self.request_stop(1)
                return {"error": "internal: the change could not be committed"}
            log.info("tariffs %s %s by %s", request.action, request.tariff_id or "", by)
        return reply

    def vehicle_request(
        self,
        conn: int,
        vehicle_id: str,
        request: VehicleRequest,
        slot: Slot,
        address: str | None = None,
    ) -> None:
        effects: list[Effect] = self.core.handle_request(
            conn, vehicle_id, request, time.time(), address
        )
        if self._pending or needs_commit(effects):
            self._pending.extend(effects)
            self._schedule_flush()
            self._link_reply(effects, conn, slot, self._reply_slots)
            return
        # a query or a refusal, and no commit waiting before it: answered in this loop
        # turn, without the store (such a batch schedules no timer either: every rule
        # that schedules one also persists what it scheduled)
        slots: dict[int, Slot] = {}
        self._link_reply(effects, conn, slot, slots)
        for effect in effects:
            self._carry_out(effect, slots)

    @staticmethod
    def _link_reply(effects: list[Effect], conn: int, slot: Slot, slots: dict[int, Slot]) -> None:
        """The request's own reply fills its slot; without one the slot waits for a later one."""
        for effect in effects:
            if isinstance(effect, Reply) and effect.conn == conn:
                slots[id(effect)] = slot
                return
        slot.waiting = True

    def vehicle_record_reply(self, persist: Persist, reply: Reply, slot: Slot) -> None:
        """Commit ``persist``, then send ``reply`` in ``slot`` (a token shown once is stored)."""
        self._pending.append(persist)
        self._pending.append(reply)
        self._reply_slots[id(reply)] = slot
        self._schedule_flush()

    # --- what the gateways edge needs (broker.edges.gateways_zmq.Host) ----------------------

    @property
    def last_seq(self) -> int:
        return self.core.last_seq

    def bind(self, vehicle_id: str, conn: PushTarget) -> None:
        self.vehicles.bind(vehicle_id, conn)

    def unbind(self, vehicle_id: str, conn: PushTarget) -> None:
        self.vehicles.unbind(vehicle_id, conn)

    def start_in_progress(self, vehicle_id: str) -> tuple[str, str] | None:
        return self.core.start_in_progress(vehicle_id)

    def session_started(self, vehicle_id: str, session_id: str) -> bool:
        return self.core.session_started(vehicle_id, session_id)

    def battery(self, vehicle_id: str, level: float, latitude: float, longitude: float) -> None:
        self._call(self.core.battery_report, vehicle_id, level, latitude, longitude)

    def persist(self, records: list[Persist]) -> None:
        """Records to commit with the next batch (committed replies pruned)."""
        self._pending.extend(records)
        self._schedule_flush()

    def vehicle_connected(self, vehicle_id: str) -> None:
        self._call(self.core.vehicle_connected, vehicle_id)

    def vehicle_disconnected(self, vehicle_id: str) -> None:
        self._call(self.core.vehicle_disconnected, vehicle_id)

    def on_datagram(self, datagram: StatusDatagram, signed_ts: float | None) -> Rejected | None:
        """Hand a datagram to the core; its refusal (stale, replayed) goes back to the edge.

        The status edge counts a refusal itself (``evcharge_datagrams_total{outcome}``,
        and a replay in ``evcharge_rejected_total``), so it is not carried out here.
        """
        refused = self.core.points_refused
        effects = self.core.handle_datagram(datagram, time.time(), signed_ts)
        if effects:
            first = effects[0]
            if type(first) is Rejected and first.edge == "status":
                return first
            self._pending.extend(effects)
            self._schedule_flush()
        if self.core.points_refused != refused:
            self.metrics.rejected.inc("status", "point_cap")
        return None

    def on_station(self, point_id: str, message: StationToBroker) -> None:
        refused = self.core.points_refused
        self._call(self.core.handle_station, point_id, message)
        if self.core.points_refused != refused:
            self.metrics.rejected.inc("stations", "point_cap")

    def on_unroutable(self, point_id: str) -> None:
        self._call(self.core.station_unreachable, point_id)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due = None
        self._call(self.core.tick)
        self._arm_timer()

    # --- the flush: commit, then send -------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        try:
            self.flush()
        except StoreError as exc:
            log.critical("cannot commit, stopping: %s", exc.message)
            self.request_stop(1)

    def flush(self) -> None:
        """Commit the pending batch, then carry out its effects."""
        while self._pending:
            effects, self._pending = self._pending, []
            slots, self._reply_slots = self._reply_slots, {}
            records = [e for e in effects if isinstance(e, Persist)]
            events = [e.event for e in effects if isinstance(e, Publish)]
            if (records or events) and self.gateways is not None:
                # a gateway's request is answered exactly once: its reply commits with it
                records += self.gateways.commit_replies(effects, slots, time.time())
            if records or events:
                self.store.write(records, events)
                self.metrics.commits.inc()
            for effect in effects:
                self._carry_out(effect, slots)
        self._arm_timer()

    def _carry_out(self, effect: Effect, slots: dict[int, Slot]) -> None:
        try:
            if isinstance(effect, Reply):
                if effect.conn >= REMOTE_BASE and self.gateways is not None:
                    self.gateways.deliver_reply(effect, slots.get(id(effect)))
                else:
                    self.vehicles.deliver_reply(effect, slots.get(id(effect)))
            elif isinstance(effect, Push):
                if not self.vehicles.deliver_push(effect) and self.gateways is not None:
                    self.gateways.hold_push(effect)
            elif isinstance(effect, Publish):
                self._publish(effect.event)
            elif isinstance(effect, SendStation) and self.stations is not None:
                self.stations.send(effect.point_id, effect.message)
            elif isinstance(effect, Rejected):
                self.reject(effect.edge, effect.reason, effect.detail)
        except Exception:
            log.exception("carrying out %s failed", type(effect).__name__)

    def _publish(self, event: BusEvent) -> None:
        self.metrics.event_published(event.topic, event.data)
        if self.bus is not None:
            self.bus.publish(event)

    def _arm_timer(self) -> None:
        loop = self._loop
        if loop is None:
            return
        due = self.core.next_due()
        if due == self._timer_due and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_due = due
        if due is not None:
            delay = max(0.0, due - time.time())
            self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    # --- HTTP pages -------------------------------------------------------------------------

    def _metrics_page(self) -> tuple[int, str, bytes]:
        body = self.metrics.registry.render().encode()
        return 200, "text/plain; version=0.0.4; charset=utf-8", body

    def _health_page(self) -> tuple[int, str, bytes]:
        body = (
            f'{{"status":"{"ok" if self.serving else "starting"}",'
            f'"last_seq":{self.core.last_seq},"vehicles_connected":'
            f"{self.vehicles.vehicles_connected}}}\n"
        )
        return (200 if self.serving else 503), "application/json", body.encode()

    # --- what the metrics read at scrape time (broker.metrics.StateSource) ----------------

    def _add_gauges(self) -> None:
        add_state_metrics(self.metrics.registry, self)

    def core_stats(self) -> dict[str, Any]:
        return self.core.stats()

    def zmq_stats(self) -> dict[str, dict[str, int]]:
        edges = (
            ("stations", self.stations),
            ("bus", self.bus),
            ("history", self.history),
            ("gateways", self.gateways),
        )
        return {name: dict(edge.stats) for name, edge in edges if edge is not None}

    def vehicles_connected(self) -> int:
        return self.vehicles.vehicles_connected

    def vehicle_connections_open(self) -> int:
        return len(self.vehicles.conns)

    def describe(self) -> str:
        c = self.config
        vehicles = (
            self.vehicles.port if not c.gateways else f"{c.vehicle_port} ({c.gateways} gateways)"
        )
        return (
            f"vehicles tcp {c.host}:{vehicles}, status udp {c.host}:{self.status.port}, "
            f"stations zmq {c.station_port}, events zmq {c.internal_host}:{c.events_port}, "
            f"history zmq {c.internal_host}:{c.history_port}, "
            f"gateways zmq {self.gateways.endpoint if self.gateways else 'off'}, "
            f"http {c.http_port}, db {c.db}, "
            f"auth {'OFF (--insecure)' if self.security is None else 'on'}, "
            f"last seq {self.core.last_seq}"
        )


def _zmq_host(host: str) -> str:
    return "*" if host in ("0.0.0.0", "") else host


async def serve(
    config: AppConfig, on_ready: Callable[[str], None], stop: asyncio.Event | None = None
) -> int:
    """Run the broker until ``stop`` is set (SIGINT/SIGTERM, see common.runner) or
    ``request_stop``; returns the exit code."""
    if config.gateways:
        local_gateway_credential(config)  # live before the broker reads its credentials
    app = BrokerApp(config, stop)
    supervisor = None
    held = None
    try:
        await app.start()
        if config.gateways:
            held, port = reserve_port(config.host, config.vehicle_port)
            config = dataclasses.replace(config, vehicle_port=port)
            app.config = config
            supervisor = Supervisor(config.gateways, lambda: gateway_argv(config))
            await supervisor.start()
        on_ready(app.describe())
        await app.stop_requested.wait()
    finally:
        if supervisor is not None:
            await supervisor.close()
        if held is not None:
            held.close()
        await app.close()
    return app.exit_code


LOCAL_GATEWAY: Final = "local-gateway"


def local_gateway_credential(config: AppConfig) -> str | None:
    """The ``gateway`` credential file of local gateways (issued when missing), or None."""
    if config.insecure:
        return None
    keys_dir = keys_dir_for(config.db, config.keys)
    keys = broker_keys(keys_dir)
    with CredentialTable(credentials_db_for(config.db, keys_dir)) as table:
        ensure(table, keys, LOCAL_GATEWAY, "gateway", None, None, keys_dir)
    return str(keys_dir / f"{LOCAL_GATEWAY}.cred")


def gateway_argv(config: AppConfig) -> list[str]:
    """The command line of one local gateway of ``config``."""
    core = config.internal_host if config.internal_host not in ("0.0.0.0", "") else "127.0.0.1"
    argv = [
        sys.executable, "-m", "broker", "gateway",
        "--core", core,
        "--host", config.host,
        "--vehicle-port", str(config.vehicle_port),
        "--gateway-port", str(config.gateway_port),
        "--events-port", str(config.events_port),
        "--history-port", str(config.history_port),
        "--core-wait", f"{config.core_wait_s:g}",
        "--max-vehicle-connections", str(config.limits.max_vehicle_connections),
        "--idle-timeout", f"{config.limits.idle_timeout_s:g}",
        "--parent-pid", str(os.getpid()),
    ]  # fmt: skip
    cred = local_gateway_credential(config)
    if cred is not None:
        argv += ["--credentials", cred]
    return argv
