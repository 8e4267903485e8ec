"""The OCPI process's moving parts: bus subscribers, pushes, partners, the handshake.

Theory of operation
-------------------
Two :class:`broker.consumers.subscriber.Subscriber` instances run here:

* **locations** starts from a snapshot (Clone pattern) and applies every later
  event to :class:`LocationsView`; each change of an EVSE becomes one push per
  registered eMSP (a new Location is PUT whole, a new EVSE PUT, a status
  PATCHed), queued in the outbox in one transaction per batch;
* **sessions** follows ``charging.*`` from the seq stored with the outbox, so
  a roaming driver's Session (PUT on start and on completion) and CDR (POST,
  and kept for ``GET /cdrs``) are made once per event, in the same
  transaction as the seq: none is made twice or missed across restarts.

Once a second :meth:`OcpiService.tick` re-reads the partners (the CLI may
have added or removed one), starts or stops their outbox drainers, carries out
the registration of partners added with ``--url`` (we are the one who
registers), and pulls each eMSP's tokens every ``token_pull_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import msgspec
import zmq.asyncio

from broker.consumers.billing.ledger import Bill
from broker.consumers.ocpi.commands import Commander
from broker.consumers.ocpi.mapping import (
    Change,
    Driver,
    LocationsView,
    Site,
    cdr_of,
    session_of,
)
from broker.consumers.ocpi.models import (
    VERSION,
    BusinessDetails,
    Credentials,
    CredentialsRole,
    Endpoint,
    Token,
    encode,
)
from broker.consumers.ocpi.outbox import Outbox
from broker.consumers.ocpi.store import OcpiStore, Partner, Push
from broker.consumers.ocpi.tariffs import TariffCatalog
from broker.consumers.ocpi.wire import (
    OcpiError,
    Status,
    auth_header,
    new_token,
    next_link,
    token_hash,
)
from broker.consumers.subscriber import Endpoint as BusEndpoint
from broker.consumers.subscriber import HistoryClient, Subscriber, decode_events
from common.cdr import Cdr, cdr_from_builtins, cdr_to_builtins
from common.errors import EventsPruned, EVError, TransportError
from common.messages import MAX_HISTORY_LIMIT, WALK_IN_PREFIX, BusEvent
from common.ports import VEHICLE_PORT
from common.timeutil import format_timestamp

log = logging.getLogger(__name__)

TICK_S: Final = 1.0
TARIFF_TOPIC: Final = "tariff.updated"
HANDSHAKE_TIMEOUT_S: Final = 10.0
REGISTER_RETRY_S: Final = 10.0  # a registration with an eMSP that failed is tried again


@dataclass(frozen=True, slots=True)
class OcpiConfig:
    bus: BusEndpoint
    db: str
    public_url: str  # e.g. http://127.0.0.1:8095 (no trailing slash)
    site: Site = field(default_factory=Site)
    vehicle_host: str = "127.0.0.1"
    vehicle_port: int = VEHICLE_PORT
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    token_pull_s: float = 300.0
    capacity_kwh: float = 60.0
    pipeline: int = 32
    session_refresh_s: float = 10.0

    @property
    def versions_url(self) -> str:
        return f"{self.public_url}/ocpi/versions"

    @property
    def base(self) -> str:
        return f"{self.public_url}/ocpi/{VERSION}"


CPO_MODULES: Final = (
    ("credentials", "SENDER"),
    ("credentials", "RECEIVER"),
    ("locations", "SENDER"),
    ("tariffs", "SENDER"),
    ("sessions", "SENDER"),
    ("cdrs", "SENDER"),
    ("commands", "RECEIVER"),
    ("tokens", "RECEIVER"),
)


class OcpiService:
    def __init__(self, cfg: OcpiConfig, *, ctx: zmq.asyncio.Context | None = None) -> None:
        self.cfg = cfg
        self.site = cfg.site
        self.store = OcpiStore(cfg.db)
        self.view = LocationsView(cfg.site)
        self.outbox = Outbox(
            self.store,
            backoff_initial=cfg.backoff_initial,
            backoff_max=cfg.backoff_max,
            pipeline=cfg.pipeline,
        )
        self.commander = Commander(
            self.store, self.view, host=cfg.vehicle_host, port=cfg.vehicle_port,
            kick=self.outbox.kick, capacity_kwh=cfg.capacity_kwh,
        )  # fmt: skip
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.asyncio.Context()
        self.live = Subscriber(cfg.bus, _LocationsSink(self), snapshot=True, ctx=self.ctx)
        self.sessions = Subscriber(
            cfg.bus,
            _SessionsSink(self),
            topics=("charging.",),
            start_seq=self.store.applied_seq(),
            ctx=self.ctx,
        )
        self.requests = HistoryClient(self.ctx, cfg.bus.history_url, credential=cfg.bus.credential)
        self.catalog = TariffCatalog(cfg.site)
        self.view.tariff_of = self.catalog.tariff_id_for
        self.tariffs_loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asking = asyncio.Lock()  # one history request at a time on its socket
        self.partners: list[Partner] = []
        self.http = httpx.AsyncClient(timeout=HANDSHAKE_TIMEOUT_S)
        self._tasks: list[asyncio.Task[None]] = []
        self._pulled: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self.partners = self.store.partners()
        self._tasks = [
            asyncio.create_task(self.live.run(), name="ocpi-locations"),
            asyncio.create_task(self.sessions.run(), name="ocpi-sessions"),
            asyncio.create_task(self._ticker(), name="ocpi-partners"),
            asyncio.create_task(self._session_energy(), name="ocpi-energy"),
        ]

    async def wait_ready(self) -> None:
        await self.live.ready.wait()
        await self.sessions.ready.wait()
        await asyncio.shield(self.tariffs_loaded)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.commander.close()
        await self.outbox.close()
        await self.http.aclose()
        self.live.close()
        self.sessions.close()
        self.requests.close()
        self.store.close()
        if self._own_ctx:
            self.ctx.destroy(linger=0)

    async def _ticker(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("partners tick")
            await asyncio.sleep(TICK_S)

    async def tick(self) -> None:
        self.partners = self.store.partners()
        self.outbox.sync(self.partners)
        now = time.time()
        for p in self.partners:
            if p.state == "register" and now >= self._retry_at.get(p.name, 0.0):
                self._retry_at[p.name] = now + REGISTER_RETRY_S  # until it succeeds
                await self._register_with(p)
            elif self._pull_due(p, now):
                self._pulled[p.name] = now
                with contextlib.suppress(OcpiError):
                    await self.pull_tokens(p)

    def _pull_due(self, p: Partner, now: float) -> bool:
        if p.state != "registered" or "tokens" not in p.endpoints:
            return False
        return now - self._pulled.get(p.name, 0.0) >= self.cfg.token_pull_s

    def registered(self) -> list[Partner]:
        return [p for p in self.partners if p.state == "registered"]

    # --- locations ------------------------------------------------------------------

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._asking:
            return await self.requests.request_once(request)

    async def load_tariffs(self, upto: int) -> None:
        """The tariffs as of bus event ``upto``: every ``tariff.updated`` up to it, replayed
        in order from history (or, history pruned, the ``tariffs list`` of an operator)."""
        catalog = TariffCatalog(self.site)
        seq = 0
        try:
            while seq < upto:
                reply = await self.ask({"op": "since", "seq": seq, "limit": MAX_HISTORY_LIMIT})
                events = decode_events(reply.get("events"), self.live.stats)
                for ev in events:
                    if ev.seq <= upto and ev.topic == TARIFF_TOPIC:
                        catalog.apply(ev.data, ev.ts)
                    seq = max(seq, ev.seq)
                if not reply.get("more") or not events:
                    break
        except EventsPruned:
            try:
                listed = await self.ask({"op": "tariffs", "action": "list"})
            except TransportError as exc:
                log.warning("tariffs before seq %d unknown (history pruned): %s", upto, exc)
            else:
                catalog = TariffCatalog(self.site)
                for t in listed.get("tariffs") or []:
                    catalog.apply({"tariff_id": t.get("id"), "action": "set", "tariff": t}, 0.0)
                for a in listed.get("assignments") or []:
                    catalog.apply({"tariff_id": a.get("tariff_id"), "action": "assign",
                                   "points": a.get("points")}, 0.0)  # fmt: skip
        except TransportError as exc:
            log.warning("tariffs: %s", exc)
        self.catalog = catalog
        self.view.tariff_of = catalog.tariff_id_for
        self.view.retariff(time.time())

    def on_location_events(self, events: Sequence[BusEvent]) -> None:
        pushes: list[Push] = []
        targets = [p for p in self.registered() if "locations" in p.endpoints]
        for ev in events:
            if ev.topic == TARIFF_TOPIC:
                pushes.extend(self._tariff_event(ev))
                continue
            change = self.view.apply(ev)
            if change is not None and targets:
                pushes.extend(self._location_pushes(change, targets))
        if pushes:
            self.store.enqueue(pushes)
            for p in targets:
                self.outbox.kick(p.name)

    def _tariff_event(self, ev: BusEvent) -> list[Push]:
        """A tariff set, assigned or removed: the Tariff to eMSPs with a Tariffs
        receiver, and every EVSE whose tariff changed to every eMSP."""
        self.view.state.seq = max(self.view.state.seq, ev.seq)
        change = self.catalog.apply(ev.data, ev.ts)
        if change is None:
            log.warning("seq %d: tariff.updated not applied: %.200r", ev.seq, ev.data)
            return []
        out: list[Push] = []
        s = self.site
        for p in self.registered():
            url = p.endpoints.get("tariffs")
            if url is None or change.action == "assign":
                continue
            where = f"{url.rstrip('/')}/{s.country_code}/{s.party_id}/{change.tariff_id}"
            body = self.catalog.get(change.tariff_id)
            if change.action == "remove" or body is None:
                out.append(Push(p.name, "DELETE", where, None))
            else:
                out.append(Push(p.name, "PUT", where, encode(body)))
        targets = [p for p in self.registered() if "locations" in p.endpoints]
        for c in self.view.retariff(ev.ts):
            out.extend(self._location_pushes(c, targets))
        return out

    def _location_pushes(self, c: Change, targets: list[Partner]) -> list[Push]:
        s = self.site
        out: list[Push] = []
        if c.new_location:
            loc = self.view.location(c.location_id)
            body, suffix, method, key = encode(loc), c.location_id, "PUT", None
        elif c.kind == "status":
            evse = self.view.evses[c.point_id]
            body = encode({"status": evse.status, "last_updated": evse.last_updated})
            suffix, method, key = f"{c.location_id}/{c.evse_uid}", "PATCH", f"evse:{c.evse_uid}"
        else:
            body = encode(self.view.evses[c.point_id])
            suffix, method, key = f"{c.location_id}/{c.evse_uid}", "PUT", None
        for p in targets:
            url = f"{p.endpoints['locations'].rstrip('/')}/{s.country_code}/{s.party_id}/{suffix}"
            out.append(Push(p.name, method, url, body, key))
        return out

    # --- sessions and CDRs ----------------------------------------------------------

    def on_session_events(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        pushes: list[Push] = []
        cdrs: list[tuple[str, str, float, bytes]] = []
        now = time.time()
        by_name = {p.name: p for p in self.registered()}
        for ev in events:
            vid = ev.data.get("vehicle_id")
            d = self.store.driver(vid) if isinstance(vid, str) else None
            if d is None and isinstance(vid, str) and ev.topic == "charging.started":
                d = self._walk_in(vid)
            p = by_name.get(d.partner) if d else None
            if d is None or p is None:
                continue
            s = self.site
            completed = ev.topic == "charging.completed"
            if ev.topic in ("charging.started", "charging.completed") and "sessions" in p.endpoints:
                sess = session_of(s, d, ev.data, now=ev.ts, completed=completed)
                url = (
                    f"{p.endpoints['sessions'].rstrip('/')}/{s.country_code}/{s.party_id}/{sess.id}"
                )
                pushes.append(Push(p.name, "PUT", url, encode(sess)))
            if completed:
                point = self.view.state.points.get(str(ev.data.get("point_id")))
                data = dict(ev.data)
                engine_cdr = self._ledger_cdr(ev)
                if engine_cdr is not None:
                    data["cdr"] = cdr_to_builtins(engine_cdr)
                cdr = cdr_of(s, d, data, point, now=ev.ts)
                tariff = (
                    self.catalog.get(engine_cdr.tariff_id)
                    if engine_cdr and engine_cdr.tariff_id
                    else None
                )
                if tariff is not None:
                    cdr.tariffs = [tariff]
                body = encode(cdr)
                cdrs.append((cdr.id, p.name, ev.ts, body))
                if "cdrs" in p.endpoints:
                    pushes.append(Push(p.name, "POST", p.endpoints["cdrs"], body))
        self.store.enqueue(pushes, seq=applied_seq, cdrs=cdrs)
        for name in {x.partner for x in pushes}:
            self.outbox.kick(name)
        del now

    @staticmethod
    def _ledger_cdr(ev: BusEvent) -> Cdr | None:
        """The CDR the billing ledger keeps for this bill (``billing report --format
        ocpi``): the tariff engine's, or for a flat bill the engine's CDR of one ENERGY
        component at the point's price. None for a bill the ledger would refuse."""
        try:
            return cdr_from_builtins(Bill.from_event(ev.data).ocpi_cdr())
        except (ValueError, EVError) as exc:
            log.error("seq %d: charging.completed not billable: %s", ev.seq, exc)
            return None

    def _walk_in(self, vehicle_id: str) -> Driver | None:
        """A session started at a charger with an eMSP's card (an OCPP walk-in, billed to
        its idTag's account ``idtag.<uid>``): that eMSP's driver, when its cached token
        is valid."""
        if not vehicle_id.startswith(WALK_IN_PREFIX):
            return None
        found = self.store.walk_in_token(vehicle_id.removeprefix(WALK_IN_PREFIX))
        if found is None:
            return None
        partner, t = found
        d = Driver(
            vehicle_id=vehicle_id, partner=partner, country_code=t["country_code"],
            party_id=t["party_id"], uid=t["uid"], type=t["type"],
            contract_id=t["contract_id"], auth_method="WHITELIST",
        )  # fmt: skip
        self.store.put_driver(d)
        return d

    async def _session_energy(self) -> None:
        """Running roaming sessions' kWh so far (only snapshots carry it), PATCHed."""
        await self.live.ready.wait()
        while True:
            await asyncio.sleep(self.cfg.session_refresh_s)
            try:
                await self.refresh_sessions()
            except TransportError as exc:
                log.info("session energy: %s", exc)

    async def refresh_sessions(self) -> None:
        by_name = {p.name: p for p in self.registered() if "sessions" in p.endpoints}
        ours = {
            sid: (d, by_name[d.partner])
            for sid, r in self.view.state.running.items()
            if (d := self.store.driver(r.vehicle_id)) is not None and d.partner in by_name
        }
        if not ours:
            return
        snap = await self.ask({"op": "snapshot"})
        pushes: list[Push] = []
        s = self.site
        for out in self.view.state.refresh_energy(snap):
            found = ours.get(out.session_id)
            if found is None or self.store.has_cdr(out.session_id):
                continue
            d, p = found
            body = encode({"kwh": out.energy_kwh, "last_updated": format_timestamp(time.time())})
            url = f"{p.endpoints['sessions'].rstrip('/')}/{s.country_code}/{s.party_id}/"
            pushes.append(
                Push(p.name, "PATCH", url + out.session_id, body, f"kwh:{out.session_id}")
            )
        if pushes:
            self.store.enqueue(pushes)
            for name in {x.partner for x in pushes}:
                self.outbox.kick(name)

    # --- credentials ----------------------------------------------------------------

    def our_credentials(self, token: str) -> Credentials:
        s = self.site
        return Credentials(
            token=token,
            url=self.cfg.versions_url,
            roles=[
                CredentialsRole(
                    role="CPO",
                    business_details=BusinessDetails(name=s.operator),
                    party_id=s.party_id,
                    country_code=s.country_code,
                )
            ],
        )

    def endpoints(self) -> list[Endpoint]:
        return [
            # (ignored below) module identifiers and roles come from the OCPI literal tables
            Endpoint(identifier=i, role=r, url=f"{self.cfg.base}/{i}")  # type: ignore[arg-type]
            for i, r in CPO_MODULES
        ]

    async def _get(self, url: str, token: str) -> Any:
        try:
            resp = await self.http.get(url, headers={"Authorization": auth_header(token)})
            doc = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OcpiError(Status.CLIENT_API_UNUSABLE, f"GET {url}: {exc}", 400) from exc
        if resp.status_code != 200 or not isinstance(doc, dict) or doc.get("status_code") != 1000:
            raise OcpiError(
                Status.CLIENT_API_UNUSABLE, f"GET {url}: HTTP {resp.status_code} {doc!r:.200}", 400
            )
        return doc.get("data")

    async def discover(self, versions_url: str, token: str) -> dict[str, str]:
        """Their 2.2.1 endpoints we call: identifier -> URL (their RECEIVER side; tokens SENDER)."""
        versions = await self._get(versions_url, token)
        url = next(
            (
                v.get("url")
                for v in versions or []
                if isinstance(v, dict) and v.get("version") == VERSION
            ),
            None,
        )
        if not isinstance(url, str):
            raise OcpiError(Status.UNSUPPORTED_VERSION, f"no OCPI {VERSION} at {versions_url}", 400)
        details = await self._get(url, token)
        out: dict[str, str] = {}
        for e in (details or {}).get("endpoints") or []:
            ident, role, where = e.get("identifier"), e.get("role"), e.get("url")
            if not isinstance(ident, str) or not isinstance(where, str):
                continue
            wanted = "SENDER" if ident == "tokens" else "RECEIVER"
            if role == wanted or (role is None and ident not in out):
                out[ident] = where
        return out

    async def accept_credentials(
        self, partner: Partner, body: Credentials, *, update: bool
    ) -> Credentials:
        """They registered (POST) or updated (PUT) with token A/C: fetch theirs, issue C."""
        if not update and partner.state == "registered":
            raise OcpiError(Status.CLIENT_ERROR, "already registered: use PUT to update", 405)
        if update and partner.state != "registered":
            raise OcpiError(Status.CLIENT_ERROR, "not registered: use POST", 405)
        endpoints = await self.discover(body.url, body.token)
        role = next(
            (r for r in body.roles if r.role == "EMSP"), body.roles[0] if body.roles else None
        )
        token_c = new_token()
        self.store.update_partner(
            partner.name, state="registered", token_in=token_hash(token_c), token_out=body.token,
            versions_url=body.url, endpoints=endpoints,
            country_code=role.country_code if role else None,
            party_id=role.party_id if role else None, last_error=None,
        )  # fmt: skip
        self.partners = self.store.partners()
        self.outbox.sync(self.partners)
        return self.our_credentials(token_c)

    def unregister(self, partner: Partner) -> None:
        self.store.update_partner(partner.name, state="unregistered", token_in=None)
        self.partners = self.store.partners()
        self.outbox.sync(self.partners)

    async def _register_with(self, p: Partner) -> None:
        """We register with them (``partners add --url``): token A -> our B -> their C."""
        try:
            endpoints = await self.discover(p.versions_url or "", p.token_out or "")
            if "credentials" not in endpoints:
                raise OcpiError(Status.NO_MATCHING_ENDPOINTS, "no credentials endpoint", 400)
            token_b = new_token()
            self.store.update_partner(p.name, token_in=token_hash(token_b))
            resp = await self.http.post(
                endpoints["credentials"],
                content=encode(self.our_credentials(token_b)),
                headers={
                    "Authorization": auth_header(p.token_out or ""),
                    "Content-Type": "application/json",
                },
            )
            doc = resp.json()
            theirs = msgspec.convert(doc.get("data"), Credentials)
            if doc.get("status_code") != 1000:
                raise OcpiError(Status.CLIENT_API_UNUSABLE, f"credentials refused: {doc!r:.200}")
        except (
            OcpiError,
            httpx.HTTPError,
            ValueError,
            msgspec.ValidationError,
            AttributeError,
        ) as exc:
            self.store.update_partner(p.name, last_error=str(exc)[:300])
            return
        role = next(
            (r for r in theirs.roles if r.role == "EMSP"), theirs.roles[0] if theirs.roles else None
        )
        self.store.update_partner(
            p.name, state="registered", token_out=theirs.token, endpoints=endpoints,
            versions_url=theirs.url, country_code=role.country_code if role else None,
            party_id=role.party_id if role else None, last_error=None,
        )  # fmt: skip
        log.info("registered with %s", p.name)

    # --- tokens ---------------------------------------------------------------------

    async def pull_tokens(self, p: Partner) -> int:
        """Every token of the eMSP (its Tokens SENDER, page by page) into the cache."""
        url: str | None = p.endpoints.get("tokens")
        got = 0
        while url:
            try:
                resp = await self.http.get(
                    url, headers={"Authorization": auth_header(p.token_out or "")}
                )
                doc = resp.json()
                items = doc.get("data") or []
                if not isinstance(items, list):
                    raise ValueError("data is not a list")
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                log.info("token pull from %s: %s", p.name, exc)
                raise OcpiError(Status.CLIENT_API_UNUSABLE, str(exc)) from exc
            tokens = []
            for item in items:
                try:
                    tokens.append(msgspec.to_builtins(msgspec.convert(item, Token)))
                except msgspec.ValidationError as exc:  # one bad token spoils no other
                    log.info("token from %s skipped: %s", p.name, exc)
            self.store.put_tokens(p.name, tokens)
            got += len(tokens)
            url = next_link(resp.headers.get("link"))
        return got


class _LocationsSink:
    def __init__(self, svc: OcpiService) -> None:
        self.svc = svc

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.svc.view.load_snapshot(snapshot, time.time())
        seq = int(snapshot.get("seq") or 0)
        self.svc.tariffs_loaded = asyncio.get_running_loop().create_task(self.svc.load_tariffs(seq))

    async def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        await self.svc.tariffs_loaded  # the tariffs as of the snapshot come first
        self.svc.on_location_events(events)


class _SessionsSink:
    def __init__(self, svc: OcpiService) -> None:
        self.svc = svc

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        return None

    def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        self.svc.on_session_events(events, applied_seq)
