"""Sites: which points share a grid connection, and the effects of sharing it.

The owner of every site (energy.md). It keeps the operators' definitions, maps
points to sites (by the credential patterns, a point in at most one site), runs
one :class:`broker.core.allocation.SiteAllocator` per site and turns the plans
it makes into effects: ``limit`` commands (:class:`common.messages.Limit`),
``site.allocation``, ``charging.paused`` / ``charging.resumed`` and
``site.overdraw`` events. The engine calls it at the few moments that matter
(a start is sent, a session ends, a station acks or reports its power, a timer)
and never reads its tables; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from broker.core.allocation import (
    RESEND_S,
    Plan,
    SiteAllocator,
    SlotState,
    kw_to_w,
    w_to_kw,
)
from broker.core.effects import Effect, Persist, Rejected, SendStation
from broker.core.site_defs import DEFAULT_MIN_KW, SITE_PREFIX, SiteDef
from common.credentials import point_matches
from common.errors import LimitRefused, Overdraw
from common.events import (
    ChargingPaused,
    ChargingResumed,
    EventData,
    SiteAllocation,
    SiteOverdraw,
    SiteUpdated,
)
from common.messages import Limit

REALLOCATE_S: Final = 10.0  # the rule runs at least this often
OVERDRAW_TOLERANCE: Final = 1.05  # a report above limit * this counts as overdraw
OVERDRAW_STRIKES: Final = 3  # consecutive overdraw reports before the session is held at 0
DEMAND_STEP_W: Final = 1000  # a demand change smaller than this is not worth a reallocation

Publisher = Callable[[list[Effect], EventData, float], None]
#: (session_id, allocated kW, now): the power a session may draw changed (charging
#: periods of a tariffed session split there)
PowerHook = Callable[[str, float, float], object]


@dataclass(slots=True)
class _Member:
    """A session on a site."""

    site: str
    vehicle_id: str
    point_id: str
    drawn_kw: float = 0.0
    strikes: int = 0


class Sites:
    """Every site, its allocator, and the sessions running on it."""

    def __init__(
        self, new_id: Callable[[str], str], publish: Publisher, on_power: PowerHook | None = None
    ) -> None:
        self._new_id = new_id
        self._publish = publish
        self._on_power = on_power
        self._defs: dict[str, SiteDef] = {}
        self._alloc: dict[str, SiteAllocator] = {}
        self._point_site: dict[str, str | None] = {}  # cache of site_of, cleared on changes
        self._members: dict[str, _Member] = {}  # session_id -> member
        self._cmds: dict[str, str] = {}  # limit cmd_id in flight -> session_id
        self.overdraws: dict[str, int] = {}  # site -> overdraw reports
        self._next_periodic = math.inf
        self._resend_due = math.inf

    # --- reading --------------------------------------------------------------------

    def __bool__(self) -> bool:
        return bool(self._defs)

    def definitions(self) -> list[SiteDef]:
        return [self._defs[n] for n in sorted(self._defs)]

    def definition(self, name: str) -> SiteDef | None:
        return self._defs.get(name)

    def site_of(self, point_id: str) -> str | None:
        """The site ``point_id`` belongs to, or None (unlimited)."""
        try:
            return self._point_site[point_id]
        except KeyError:
            pass
        found = None
        for d in self._defs.values():
            if any(point_matches(p, point_id) for p in d.points):
                found = d.name
                break
        self._point_site[point_id] = found
        return found

    def tracks(self, session_id: str) -> bool:
        return session_id in self._members

    def allowed_kw(self, session_id: str) -> float | None:
        """The power the rule gives ``session_id`` now (None: not on a site)."""
        m = self._members.get(session_id)
        if m is None:
            return None
        slot = self._alloc[m.site].slot(session_id)
        return w_to_kw(slot.target_w) if slot is not None else None

    def resume_kw(self, session_id: str) -> float:
        """The least a paused session will get once it resumes (its minimum)."""
        m = self._members.get(session_id)
        slot = self._alloc[m.site].slot(session_id) if m is not None else None
        return w_to_kw(slot.min_w) if slot is not None else DEFAULT_MIN_KW

    def paused(self, session_id: str) -> bool:
        m = self._members.get(session_id)
        if m is None:
            return False
        slot = self._alloc[m.site].slot(session_id)
        return slot is not None and slot.state is not SlotState.RUNNING

    def figures(self) -> dict[str, dict[str, float]]:
        """Per site: ``limit_kw``, ``allocated_kw``, ``drawn_kw``, ``overdraws`` (metrics)."""
        drawn: dict[str, float] = {}
        for m in self._members.values():
            drawn[m.site] = drawn.get(m.site, 0.0) + m.drawn_kw
        return {
            name: {
                "limit_kw": d.limit_kw,
                "allocated_kw": w_to_kw(self._alloc[name].allocated_total()),
                "drawn_kw": round(drawn.get(name, 0.0), 3),
                "overdraws": float(self.overdraws.get(name, 0)),
            }
            for name, d in self._defs.items()
        }

    def view(self) -> list[dict[str, Any]]:
        """Every site with its figures and sessions, as plain data (sorted by name)."""
        out = []
        for d in self.definitions():
            alloc = self._alloc[d.name]
            sessions = []
            drawn = 0.0
            for slot in alloc.slots():
                m = self._members.get(slot.session_id)
                kw_drawn = m.drawn_kw if m is not None else 0.0
                drawn += kw_drawn
                sessions.append(
                    {
                        "session_id": slot.session_id,
                        "point_id": slot.point_id,
                        "vehicle_id": m.vehicle_id if m is not None else None,
                        "kw": w_to_kw(slot.target_w),
                        "in_force_kw": w_to_kw(slot.granted_w),
                        "drawn_kw": round(kw_drawn, 3),
                        "state": slot.state.value,
                    }
                )
            out.append(
                {
                    **d.record(),
                    "allocated_kw": w_to_kw(alloc.allocated_total()),
                    "in_force_kw": w_to_kw(alloc.granted_total()),
                    "drawn_kw": round(drawn, 3),
                    "overdraws": self.overdraws.get(d.name, 0),
                    "sessions": sessions,
                }
            )
        return out

    # --- definitions ----------------------------------------------------------------

    def restore(self, d: SiteDef, now: float) -> None:
        """A persisted definition (before the sessions are restored)."""
        self._defs[d.name] = d
        self._alloc[d.name] = SiteAllocator(kw_to_w(d.limit_kw), kw_to_w(d.min_kw))
        self._point_site.clear()
        self._next_periodic = min(self._next_periodic, now)

    def define(
        self,
        d: SiteDef,
        by: str,
        running: Iterable[tuple[str, str, str, float, float]],
        now: float,
        fx: list[Effect],
    ) -> None:
        """Create or change a site (checked by :func:`check_site`); ``running``: every
        running or starting session as ``(session_id, vehicle_id, point_id,
        started_at, potencia_kw)``, so that sessions on points now in the site join it."""
        old = self._defs.get(d.name)
        self._defs[d.name] = d
        self._point_site.clear()
        fx.append(Persist("meta", SITE_PREFIX + d.name, d.record()))
        self._publish(
            fx,
            SiteUpdated(
                site=d.name, limit_kw=d.limit_kw, min_kw=d.min_kw, points=list(d.points), by=by
            ),
            now,
        )
        alloc = self._alloc.get(d.name)
        if alloc is None:
            alloc = self._alloc[d.name] = SiteAllocator(kw_to_w(d.limit_kw), kw_to_w(d.min_kw))
        else:
            alloc.set_limit(kw_to_w(d.limit_kw), kw_to_w(d.min_kw))
        if old is not None:
            # sessions on points no longer in the site leave it (unlimited again)
            for sid, m in list(self._members.items()):
                if m.site == d.name and self.site_of(m.point_id) != d.name:
                    self._leave(sid, now, fx, release=True)
        self._adopt_all(running, now)
        self._next_periodic = min(self._next_periodic, now + REALLOCATE_S)
        self._reconcile(d.name, now, fx)

    def remove(self, name: str, by: str, now: float, fx: list[Effect]) -> bool:
        d = self._defs.pop(name, None)
        if d is None:
            return False
        self._point_site.clear()
        for sid, m in list(self._members.items()):
            if m.site == name:
                self._leave(sid, now, fx, release=True)
        self._alloc.pop(name, None)
        fx.append(Persist("meta", SITE_PREFIX + name, None))
        self._publish(
            fx,
            SiteUpdated(
                site=name,
                limit_kw=d.limit_kw,
                min_kw=d.min_kw,
                points=list(d.points),
                removed=True,
                by=by,
            ),
            now,
        )
        return True

    def _adopt_all(self, running: Iterable[tuple[str, str, str, float, float]], now: float) -> None:
        for sid, vehicle_id, point_id, started_at, potencia_kw in running:
            if sid not in self._members:
                self.adopt(sid, vehicle_id, point_id, started_at, potencia_kw)

    def adopt(
        self, session_id: str, vehicle_id: str, point_id: str, started_at: float, potencia_kw: float
    ) -> None:
        """A session already running (restored, or on a point that just joined a site): its
        station may draw its full power until it acks a lower limit."""
        site = self.site_of(point_id)
        if site is None:
            return
        nominal = kw_to_w(potencia_kw)
        self._alloc[site].admit(session_id, point_id, started_at, nominal, nominal)
        self._members[session_id] = _Member(site, vehicle_id, point_id)

    # --- sessions -------------------------------------------------------------------

    def start(
        self,
        session_id: str,
        vehicle_id: str,
        point_id: str,
        potencia_kw: float,
        now: float,
        fx: list[Effect],
    ) -> float | None:
        """A ``start`` is about to be sent: the kW it carries (None: not on a site)."""
        site = self.site_of(point_id)
        if site is None:
            return None
        self._members[session_id] = _Member(site, vehicle_id, point_id)
        w, plan = self._alloc[site].start(
            session_id, point_id, now, kw_to_w(potencia_kw), now, self._new_id
        )
        self._carry(site, plan, now, fx)
        return w_to_kw(w)

    def end(self, session_id: str, now: float, fx: list[Effect]) -> None:
        """The session ended or its start failed: its power is free again."""
        if session_id in self._members:
            self._leave(session_id, now, fx, release=False)

    def _leave(self, session_id: str, now: float, fx: list[Effect], release: bool) -> None:
        m = self._members.pop(session_id)
        for cmd_id in [c for c, sid in self._cmds.items() if sid == session_id]:
            del self._cmds[cmd_id]
        alloc = self._alloc[m.site]
        slot = alloc.slot(session_id)
        alloc.remove(session_id)
        if release and slot is not None:
            # no longer on a site: unlimited again (the point's power)
            kw = w_to_kw(slot.nominal_w)
            fx.append(
                SendStation(
                    m.point_id, Limit(cmd_id=self._new_id("cmd"), session_id=session_id, kw=kw)
                )
            )
        if m.site in self._defs:  # (a removed site has nobody left to share with)
            self._reconcile(m.site, now, fx)

    def acked(self, cmd_id: str, ok: bool, now: float, fx: list[Effect]) -> bool:
        """An ack of a ``limit`` command (False: not one of ours). A refusal settles
        nothing: the command is sent again."""
        sid = self._cmds.get(cmd_id)
        if sid is None:
            return False
        if not ok:
            fx.append(Rejected("energy", LimitRefused(f"session {sid} refused {cmd_id}")))
            return True
        del self._cmds[cmd_id]
        m = self._members.get(sid)
        if m is not None and self._alloc[m.site].acked(sid, cmd_id):
            self._reconcile(m.site, now, fx)  # raise what may be raised now
        return True

    def drawn(self, session_id: str, kw: float, now: float, fx: list[Effect]) -> None:
        """The station reports ``kw`` drawn for ``session_id`` (``potencia_atual_kw``)."""
        m = self._members.get(session_id)
        if m is None:
            return
        m.drawn_kw = kw
        alloc = self._alloc[m.site]
        slot = alloc.slot(session_id)
        if slot is None:
            return
        in_force = w_to_kw(slot.granted_w)
        if kw > in_force * OVERDRAW_TOLERANCE + 1e-9:
            self.overdraws[m.site] = self.overdraws.get(m.site, 0) + 1
            m.strikes += 1
            fx.append(
                Rejected(
                    "energy",
                    Overdraw(
                        f"{m.point_id!r} session {session_id} draws {kw:g} kW, "
                        f"limit {in_force:g} kW"
                    ),
                )
            )
            if m.strikes >= OVERDRAW_STRIKES and alloc.block(session_id):
                self._publish(
                    fx,
                    SiteOverdraw(
                        site=m.site,
                        session_id=session_id,
                        point_id=m.point_id,
                        limit_kw=in_force,
                        drawn_kw=kw,
                    ),
                    now,
                )
                self._reconcile(m.site, now, fx)
            return
        m.strikes = 0
        if (
            slot.state is not SlotState.RUNNING
            or slot.pending
            or slot.target_w <= 0
            or slot.sent_w != slot.target_w
        ):
            return  # not settled: the report says nothing about what the vehicle takes
        drawn_w = kw_to_w(kw)
        if drawn_w * 100 >= slot.target_w * 98:
            demand = slot.nominal_w  # it takes all it may: it may take more
        elif drawn_w * 10 < slot.target_w * 9:
            demand = min(slot.nominal_w, drawn_w + drawn_w // 10 + 500)
        else:
            return
        if demand != slot.nominal_w and abs(demand - slot.demand_w) < DEMAND_STEP_W:
            return
        if alloc.report_demand(session_id, demand):
            self._reconcile(m.site, now, fx)

    # --- time -----------------------------------------------------------------------

    def next_due(self) -> float | None:
        if not self._defs:
            return None
        return min(self._next_periodic, self._resend_due)

    def tick(self, now: float, fx: list[Effect]) -> None:
        """Resend unacknowledged lowerings; re-run the rule every REALLOCATE_S."""
        if not self._defs:
            return
        periodic = now >= self._next_periodic
        if not periodic and now < self._resend_due:
            return
        if periodic:
            self._next_periodic = now + REALLOCATE_S
        self._resend_due = math.inf
        for name, alloc in self._alloc.items():
            if periodic:
                alloc.touch()
            self._reconcile(name, now, fx)

    # --- plans into effects -----------------------------------------------------------

    def _reconcile(self, site: str, now: float, fx: list[Effect]) -> None:
        alloc = self._alloc.get(site)
        if alloc is not None:
            self._carry(site, alloc.reconcile(now, self._new_id), now, fx)

    def _carry(self, site: str, plan: Plan, now: float, fx: list[Effect]) -> None:
        alloc = self._alloc[site]
        for order in plan.orders:
            self._cmds[order.cmd_id] = order.session_id
            fx.append(
                SendStation(
                    order.point_id,
                    Limit(
                        cmd_id=order.cmd_id, session_id=order.session_id, kw=w_to_kw(order.watts)
                    ),
                )
            )
        if alloc.lowering_pending():
            self._resend_due = min(self._resend_due, now + RESEND_S)
        for sid in plan.paused:
            m = self._members[sid]
            self._publish(
                fx,
                ChargingPaused(
                    session_id=sid, vehicle_id=m.vehicle_id, point_id=m.point_id, site=site
                ),
                now,
            )
        for sid in plan.resumed:
            m = self._members[sid]
            slot = alloc.slot(sid)
            self._publish(
                fx,
                ChargingResumed(
                    session_id=sid,
                    vehicle_id=m.vehicle_id,
                    point_id=m.point_id,
                    site=site,
                    kw=w_to_kw(slot.target_w) if slot is not None else 0.0,
                ),
                now,
            )
        if self._on_power is not None:
            for sid, watts in plan.powers:
                self._on_power(sid, w_to_kw(watts), now)
        if plan.changed:
            d = self._defs[site]
            self._publish(
                fx,
                SiteAllocation(
                    site=site,
                    limit_kw=d.limit_kw,
                    allocated_kw=w_to_kw(alloc.allocated_total()),
                    sessions=[
                        {
                            "session_id": s.session_id,
                            "point_id": s.point_id,
                            "kw": w_to_kw(s.target_w),
                        }
                        for s in alloc.slots()
                    ],
                ),
                now,
            )
