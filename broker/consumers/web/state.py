"""The web console's pure state: points, running sessions and totals, fed by the bus.

Theory of operation
-------------------
:class:`ConsoleState` is loaded from a history snapshot (points, queues,
sessions as of event ``seq``) and then takes every later bus event in seq
order (:meth:`ConsoleState.apply`). Each event changes at most one point;
``apply`` returns that point's new row, so the live page can replace one
table row and one marker instead of reloading anything. Billed sessions
arrive as :class:`broker.consumers.billing.ledger.Bill` objects (:meth:`ConsoleState.add_bill`)
and keep the totals (kWh, revenue, sessions by end reason, charging time per
point) for today and for all time, updated incrementally.

No sockets, clock or framework here: ``now`` is passed in, and the rows are
the msgspec structs of :mod:`broker.consumers.web.schemas`, so the HTTP layer encodes
them without another conversion.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from broker.consumers import event_fields as fields
from broker.consumers.billing.ledger import Bill
from broker.consumers.web.schemas import (
    EventOut,
    PointOut,
    SessionOut,
    SiteOut,
    SiteSessionOut,
    Stats,
    StatsPeriod,
    Utilisation,
)
from common.messages import BusEvent
from common.timeutil import format_timestamp, parse_timestamp

LATEST_EVENTS: Final = 50
ZERO: Final = Decimal("0")


def local_midnight(now: float) -> float:
    """Epoch seconds of the start of ``now``'s day in the process's local time zone."""
    t = time.localtime(now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


@dataclass(slots=True)
class Point:
    """What the console knows about one point."""

    id: str
    latitude: float = 0.0
    longitude: float = 0.0
    estado: str = "offline"
    online: bool = False
    potencia_kw: float | None = None
    preco_kwh: float | None = None
    queue: list[str] = field(default_factory=list)
    vehicle_id: str | None = None
    session_id: str | None = None
    out_of_service: bool = False
    reason: str | None = None
    last_heard: float | None = None
    tarifa: dict[str, Any] | None = None

    def row(self) -> PointOut:
        return PointOut(
            id=self.id,
            latitude=self.latitude,
            longitude=self.longitude,
            estado=self.estado,
            online=self.online,
            fora_de_servico=self.out_of_service,
            reason=self.reason,
            queue=list(self.queue),
            queue_size=len(self.queue),
            vehicle_id=self.vehicle_id,
            session_id=self.session_id,
            potencia_kw=self.potencia_kw,
            preco_kwh=self.preco_kwh,
            last_heard=None if self.last_heard is None else format_timestamp(self.last_heard),
            tarifa=self.tarifa,
        )


@dataclass(slots=True)
class Running:
    """A running session: who, where, since when, the energy last reported."""

    session_id: str
    vehicle_id: str
    point_id: str
    started_at: float
    price_kwh: float | None = None
    payment_method: str | None = None
    energy_kwh: float = 0.0
    kw: float | None = None  # allowed on its site (None: not on a site)
    cost: float | None = None  # so far (the broker's custo_parcial)

    def out(self) -> SessionOut:
        return SessionOut(
            session_id=self.session_id,
            vehicle_id=self.vehicle_id,
            point_id=self.point_id,
            started_at=format_timestamp(self.started_at),
            active=True,
            energy_kwh=round(self.energy_kwh, 3),
            price_kwh=self.price_kwh,
            payment_method=self.payment_method,
            cost=self.cost,
            potencia_kw=self.kw,
            aguardando_energia=self.kw == 0.0,
        )


@dataclass(slots=True)
class Site:
    """A site as the console knows it (site.updated, site.allocation, snapshots)."""

    name: str
    limit_kw: float = 0.0
    min_kw: float = 0.0
    points: list[str] = field(default_factory=list)
    allocated_kw: float = 0.0
    drawn_kw: float | None = None  # only snapshots carry it
    kws: dict[str, tuple[str, float]] = field(default_factory=dict)  # session -> (point, kW)
    drawn: dict[str, float] = field(default_factory=dict)  # session -> kW drawn

    def out(self) -> SiteOut:
        return SiteOut(
            name=self.name,
            limit_kw=self.limit_kw,
            min_kw=self.min_kw,
            points=list(self.points),
            allocated_kw=self.allocated_kw,
            drawn_kw=self.drawn_kw,
            sessions=[
                SiteSessionOut(session_id=sid, point_id=pid, kw=kw, drawn_kw=self.drawn.get(sid))
                for sid, (pid, kw) in self.kws.items()
            ],
        )


@dataclass(slots=True)
class Totals:
    """Sums over billed sessions (money in Decimal)."""

    sessions: int = 0
    energy_kwh: Decimal = ZERO
    revenue: Decimal = ZERO
    by_reason: dict[str, int] = field(default_factory=dict)
    charging_s: dict[str, float] = field(default_factory=dict)

    def add(self, b: Bill, start: float, end: float) -> None:
        self.sessions += 1
        self.energy_kwh += b.energy_kwh
        self.revenue += b.cost
        self.by_reason[b.reason] = self.by_reason.get(b.reason, 0) + 1
        if end > start:
            self.charging_s[b.point_id] = self.charging_s.get(b.point_id, 0.0) + end - start


class ConsoleState:
    """Points, running sessions, latest events and totals; updated one event at a time."""

    def __init__(self) -> None:
        self.points: dict[str, Point] = {}
        self.running: dict[str, Running] = {}
        self.sites: dict[str, Site] = {}
        self.seq = 0
        self.latest: deque[EventOut] = deque(maxlen=LATEST_EVENTS)
        self.billed: set[str] = set()
        self.all_time = Totals()
        self.today = Totals()
        self.day_start = 0.0
        self.first_start: float | None = None
        self._today_bills: list[tuple[Bill, float, float]] = []

    # --- input ----------------------------------------------------------------------

    def load_snapshot(self, snap: Mapping[str, Any], now: float) -> None:
        """Replace points and sessions with a snapshot ``{seq, points, queues, sessions}``."""
        self.points.clear()
        self.running.clear()
        self.seq = int(fields.number(snap.get("seq")) or 0)
        for raw in snap.get("points") or []:
            if not isinstance(raw, Mapping) or (pid := fields.point_id(raw)) is None:
                continue
            p = self.points[pid] = Point(pid)
            self._static(p, raw)
            if isinstance(raw.get("estado"), str):
                p.estado = raw["estado"]
            online = raw.get("online")
            p.online = online if isinstance(online, bool) else p.estado != "offline"
            p.out_of_service = raw.get("fora_de_servico") is True
            reason = raw.get("reason", raw.get("motivo"))
            p.reason = reason if isinstance(reason, str) and p.out_of_service else None
            p.last_heard = fields.epoch(raw.get("last_heard"))
            tarifa = raw.get("tarifa")
            p.tarifa = dict(tarifa) if isinstance(tarifa, Mapping) else None
        queues = snap.get("queues") or {}
        if isinstance(queues, Mapping):
            for pid, entries in queues.items():
                p = self._point(str(pid))
                listed = entries if isinstance(entries, list) else []
                p.queue = [v for v in (fields.vehicle_id(e) for e in listed) if v]
        for s in snap.get("sessions") or []:
            if not isinstance(s, Mapping) or (pid := fields.point_id(s)) is None:
                continue
            sid, vid = s.get("session_id"), fields.vehicle_id(s)
            if not isinstance(sid, str) or vid is None:
                continue
            started = fields.epoch(s.get("inicio", s.get("started_at"))) or now
            r = Running(sid, vid, pid, started, fields.number(s.get("preco_kwh")))
            r.payment_method = s.get("payment_method")
            r.energy_kwh = fields.number(s.get("energia_kwh")) or 0.0
            r.cost = fields.number(s.get("custo_parcial"))
            self.running[sid] = r
            p = self._point(pid)
            p.vehicle_id, p.session_id = vid, sid
        self.sites.clear()
        self._load_sites(snap)

    def _load_sites(self, snap: Mapping[str, Any]) -> None:
        for raw in snap.get("sites") or []:
            if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
                continue
            site = self.sites[raw["name"]] = Site(raw["name"])
            self._site_static(site, raw)
            site.allocated_kw = fields.number(raw.get("allocated_kw")) or 0.0
            site.drawn_kw = fields.number(raw.get("drawn_kw"))
            self._site_sessions(site, raw.get("sessions"))
            for s in raw.get("sessions") or []:
                drawn = fields.number(s.get("drawn_kw")) if isinstance(s, Mapping) else None
                if drawn is not None:
                    site.drawn[str(s.get("session_id"))] = drawn

    def _site_static(self, site: Site, d: Mapping[str, Any]) -> None:
        site.limit_kw = fields.number(d.get("limit_kw")) or 0.0
        site.min_kw = fields.number(d.get("min_kw")) or 0.0
        points = d.get("points")
        site.points = [str(x) for x in points] if isinstance(points, list) else []

    def _site_sessions(self, site: Site, sessions: Any) -> None:
        site.kws = {}
        for s in sessions if isinstance(sessions, list) else []:
            if not isinstance(s, Mapping) or (pid := fields.point_id(s)) is None:
                continue
            sid, kw = str(s.get("session_id")), fields.number(s.get("kw")) or 0.0
            site.kws[sid] = (pid, kw)
            r = self.running.get(sid)
            if r is not None:
                r.kw = kw

    def refresh_energy(self, snap: Mapping[str, Any]) -> list[SessionOut]:
        """Take the energy so far of running sessions from a newer snapshot."""
        changed = []
        for raw in snap.get("points") or []:  # tariffs in force change with the clock too
            if isinstance(raw, Mapping) and (p := self.points.get(str(raw.get("id")))):
                tarifa = raw.get("tarifa")
                p.tarifa = dict(tarifa) if isinstance(tarifa, Mapping) else None
        for s in snap.get("sessions") or []:
            if not isinstance(s, Mapping):
                continue
            r = self.running.get(str(s.get("session_id")))
            energy = fields.number(s.get("energia_kwh"))
            cost = fields.number(s.get("custo_parcial"))
            if r is not None and energy is not None and (energy, cost) != (r.energy_kwh, r.cost):
                r.energy_kwh, r.cost = energy, cost
                changed.append(r.out())
        if snap.get("sites") is not None or self.sites:
            self.sites.clear()
            self._load_sites(snap)
        return changed

    def apply(self, ev: BusEvent) -> PointOut | None:
        """One sequenced bus event; returns the row of the point it changed (if any)."""
        if ev.seq <= self.seq:
            return None
        self.seq = ev.seq
        self.latest.appendleft(event_out(ev))
        if ev.topic.startswith("site."):
            self._apply_site(ev)
            return None
        pid = fields.point_id(ev.data)
        if pid is None:
            return None
        p = self._point(pid)
        p.last_heard = max(p.last_heard or 0.0, ev.ts)
        self._apply_topic(p, ev)
        return p.row()

    def _apply_topic(self, p: Point, ev: BusEvent) -> None:
        d, topic = ev.data, ev.topic
        vid = fields.vehicle_id(d)
        if topic == "point.registered":
            self._static(p, d)
        elif topic == "point.status" and isinstance(d.get("estado"), str):
            p.estado = d["estado"]
            if p.estado == "offline":
                p.online = False
            elif not p.out_of_service:  # out of service shows indisponivel either way
                p.online = True
        elif topic == "point.online":
            p.online = True
        elif topic == "point.offline":
            p.online = False
            if not p.out_of_service:
                p.estado = "offline"
            p.last_heard = fields.epoch(d.get("last_heard")) or p.last_heard
        elif topic == "point.availability":
            p.out_of_service = d.get("available") is False
            reason = d.get("reason")
            p.reason = reason if isinstance(reason, str) and p.out_of_service else None
        elif topic == "reservation.created" and vid and vid not in p.queue:
            p.queue.append(vid)
        elif topic in ("reservation.cancelled", "reservation.expired") and vid in p.queue:
            p.queue.remove(vid)
        elif topic == "charging.started" and vid:
            if vid in p.queue:
                p.queue.remove(vid)
            sid = str(d.get("session_id") or "")
            started = fields.epoch(d.get("started_at")) or ev.ts
            r = Running(sid, vid, p.id, started, fields.number(d.get("price_kwh")))
            r.payment_method = d.get("payment_method")
            self.running[sid] = r
            p.vehicle_id, p.session_id = vid, sid
        elif topic == "charging.completed":
            self.running.pop(str(d.get("session_id")), None)
            if p.session_id is None or p.session_id == d.get("session_id"):
                p.vehicle_id = p.session_id = None

    def _apply_site(self, ev: BusEvent) -> None:
        d = ev.data
        name = d.get("site")
        if not isinstance(name, str):
            return
        if ev.topic == "site.updated":
            if d.get("removed") is True:
                self.sites.pop(name, None)
                return
            self._site_static(self.sites.setdefault(name, Site(name)), d)
        elif ev.topic == "site.allocation":
            site = self.sites.setdefault(name, Site(name))
            site.limit_kw = fields.number(d.get("limit_kw")) or site.limit_kw
            site.allocated_kw = fields.number(d.get("allocated_kw")) or 0.0
            self._site_sessions(site, d.get("sessions"))

    def site_rows(self) -> list[SiteOut]:
        return [self.sites[name].out() for name in sorted(self.sites)]

    def _static(self, p: Point, d: Mapping[str, Any]) -> None:
        for name in ("latitude", "longitude"):
            if (v := fields.number(d.get(name))) is not None:
                setattr(p, name, v)
        for name in ("potencia_kw", "preco_kwh"):
            if (v := fields.number(d.get(name))) is not None:
                setattr(p, name, v)

    def _point(self, pid: str) -> Point:
        p = self.points.get(pid)
        if p is None:
            p = self.points[pid] = Point(pid)
        return p

    # --- bills and totals -----------------------------------------------------------

    def add_bill(self, b: Bill, now: float) -> bool:
        """Count a billed session once; returns False for one already counted."""
        if b.session_id in self.billed:
            return False
        self.billed.add(b.session_id)
        start, end = parse_timestamp(b.started_at), parse_timestamp(b.ended_at)
        self.first_start = start if self.first_start is None else min(self.first_start, start)
        self.all_time.add(b, start, end)
        self._roll_day(now)
        if end >= self.day_start:
            self._today_bills.append((b, start, end))
            self.today.add(b, max(start, self.day_start), end)
        return True

    def _roll_day(self, now: float) -> None:
        midnight = local_midnight(now)
        if midnight == self.day_start:
            return
        self.day_start = midnight
        kept = [(b, s, e) for b, s, e in self._today_bills if e >= midnight]
        self._today_bills = []
        self.today = Totals()
        for b, s, e in kept:
            self._today_bills.append((b, s, e))
            self.today.add(b, max(s, midnight), e)

    def stats(self, now: float) -> Stats:
        """Totals for today (local midnight to ``now``) and all time, running sessions included."""
        self._roll_day(now)
        since = self.first_start if self.first_start is not None else now
        for r in self.running.values():
            since = min(since, r.started_at)
        return Stats(
            today=self._period(self.today, self.day_start, now),
            all_time=self._period(self.all_time, since, now),
            sessions_active=len(self.running),
            points=len(self.points),
            points_online=sum(1 for p in self.points.values() if p.online),
            points_out_of_service=sum(1 for p in self.points.values() if p.out_of_service),
            seq=self.seq,
        )

    def _period(self, t: Totals, start: float, now: float) -> StatsPeriod:
        span = max(now - start, 1e-9)
        busy = dict(t.charging_s)
        for r in self.running.values():
            busy[r.point_id] = busy.get(r.point_id, 0.0) + max(0.0, now - max(r.started_at, start))
        return StatsPeriod(
            since=format_timestamp(start),
            sessions=t.sessions,
            energy_kwh=float(t.energy_kwh.quantize(Decimal("0.001"))),
            revenue=float(t.revenue.quantize(Decimal("0.01"))),
            sessions_by_reason=dict(sorted(t.by_reason.items())),
            utilisation=[
                Utilisation(
                    point_id=pid, charging_s=round(s, 1), share=round(min(1.0, s / span), 4)
                )
                for pid, s in sorted(busy.items())
            ],
        )

    # --- views ----------------------------------------------------------------------

    def rows(self) -> list[PointOut]:
        return [self.points[pid].row() for pid in sorted(self.points)]

    def sessions(self) -> list[SessionOut]:
        return [r.out() for r in sorted(self.running.values(), key=lambda r: r.started_at)]

    def add_past(self, events: Iterable[BusEvent]) -> None:
        """Events from before the snapshot, oldest first: listed under the newer ones."""
        known = {e.seq for e in self.latest}
        for ev in sorted(events, key=lambda e: e.seq, reverse=True):
            if ev.seq not in known and len(self.latest) < LATEST_EVENTS:
                self.latest.append(event_out(ev))

    def apply_all(self, events: Iterable[BusEvent]) -> None:
        for ev in events:
            self.apply(ev)


def event_out(ev: BusEvent) -> EventOut:
    return EventOut(seq=ev.seq, ts=ev.ts, topic=ev.topic, data=ev.data)
