"""The monitor's pure view model: fed a snapshot and bus events, renders a rich view.

No sockets, clock or terminal here: ``now`` is passed in, so tests render it
with ``Console(record=True)``. Built for 10,000 points: every event updates
one point in O(log n) (points are kept in one sorted list per state), the
counters are maintained incrementally, and a render touches one page only.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from broker.consumers import event_fields as fields
from common.errors import BusProtocolError
from common.events import (
    ChargingCompleted,
    ChargingStarted,
    EventData,
    PointOffline,
    PointOnline,
    PointStatus,
    ReservationCancelled,
    ReservationCreated,
    ReservationExpired,
    event_data,
)
from common.messages import BusEvent
from common.timeutil import format_timestamp

# display order: the busy points first
STATES: Final = ("carregando", "reservado", "disponivel", "indisponivel", "offline")
STATE_STYLE: Final = {
    "carregando": "bold green",
    "reservado": "yellow",
    "disponivel": "cyan",
    "indisponivel": "red",
    "offline": "dim",
}
RATE_WINDOW_S: Final = 5.0
LATEST_EVENTS: Final = 8


@dataclass
class PointView:
    id: str
    online: bool = True
    faulted: bool = False
    queue: list[str] = field(default_factory=list)
    vehicle: str | None = None
    session_id: str | None = None
    energy_kwh: float | None = None
    last_heard: float | None = None

    @property
    def state(self) -> str:
        if not self.online:
            return "offline"
        if self.faulted:
            return "indisponivel"
        if self.vehicle is not None:
            return "carregando"
        return "reservado" if self.queue else "disponivel"

    def apply_estado(self, estado: Any) -> None:
        if estado == "offline":
            self.online = False
        elif isinstance(estado, str):
            self.online = True
            self.faulted = estado == "indisponivel"


class MonitorView:
    """State of every point plus counters, updated incrementally, rendered a page at a time."""

    def __init__(self, page_size: int = 20) -> None:
        self.page_size = max(1, page_size)
        self.max_page_size = self.page_size
        self.page = 0
        self.points: dict[str, PointView] = {}
        self._by_state: dict[str, list[str]] = {s: [] for s in STATES}
        self._state_of: dict[str, str] = {}
        self.seq = 0
        self.events_seen = 0
        self._recent: deque[float] = deque()
        self._latest: deque[BusEvent] = deque(maxlen=LATEST_EVENTS)
        self.queued = 0
        self.figures: dict[str, Any] = {}  # e.g. subscriber lag and gaps, shown in the header

    # --- incremental index ----------------------------------------------------------

    def _reindex(self, p: PointView) -> None:
        new, old = p.state, self._state_of.get(p.id)
        if new == old:
            return
        if old is not None:
            lst = self._by_state[old]
            i = bisect.bisect_left(lst, p.id)
            if i < len(lst) and lst[i] == p.id:
                del lst[i]
        bisect.insort(self._by_state[new], p.id)
        self._state_of[p.id] = new

    def _point(self, pid: str) -> PointView:
        p = self.points.get(pid)
        if p is None:
            p = self.points[pid] = PointView(pid)
            self._reindex(p)
        return p

    def _set_queue(self, p: PointView, queue: list[str]) -> None:
        self.queued += len(queue) - len(p.queue)
        p.queue = queue

    # --- input ----------------------------------------------------------------------

    def load_snapshot(self, snap: Mapping[str, Any]) -> None:
        """Replace everything with a snapshot ``{seq, points, queues, sessions}``."""
        self.points.clear()
        self._by_state = {s: [] for s in STATES}
        self._state_of.clear()
        self.queued = 0
        self.seq = int(fields.number(snap.get("seq")) or 0)
        for raw in snap.get("points") or []:
            if not isinstance(raw, Mapping) or (pid := fields.point_id(raw)) is None:
                continue
            p = self._point(pid)
            p.apply_estado(raw.get("estado"))
            if raw.get("online") is False:
                p.online = False
            for key in ("last_heard", "last_seen", "ultimo_contato"):
                if (t := fields.epoch(raw.get(key))) is not None:
                    p.last_heard = t
            if (v := fields.number(raw.get("energia_kwh"))) is not None:
                p.energy_kwh = v
        queues = snap.get("queues") or {}
        if isinstance(queues, Mapping):
            for pid, entries in queues.items():
                p = self._point(str(pid))
                listed = entries if isinstance(entries, list) else []
                ids = [v for v in (fields.vehicle_id(e) for e in listed) if v]
                self._set_queue(p, ids)
        for s in snap.get("sessions") or []:
            if isinstance(s, Mapping) and (pid := fields.point_id(s)) is not None:
                p = self._point(pid)
                p.vehicle = fields.vehicle_id(s) or "?"
                p.session_id = s.get("session_id")
                p.energy_kwh = fields.number(s.get("energia_kwh", s.get("energy_kwh")))
        for p in self.points.values():
            self._reindex(p)

    def refresh_heard(self, snap: Mapping[str, Any]) -> None:
        """Only the ``last_heard`` times of a newer snapshot: stations are heard far more
        often than they publish events (a datagram that changes nothing is no event)."""
        for raw in snap.get("points") or []:
            if not isinstance(raw, Mapping) or (pid := fields.point_id(raw)) is None:
                continue
            p = self.points.get(pid)
            if p is not None and (t := fields.epoch(raw.get("last_heard"))) is not None:
                p.last_heard = max(p.last_heard or 0.0, t)

    def apply(self, ev: BusEvent, now: float) -> None:
        """One sequenced bus event (events at or below the snapshot seq are ignored)."""
        if ev.seq <= self.seq:
            return
        self.seq = ev.seq
        self.events_seen += 1
        self._recent.append(now)
        self._expire(now)
        self._latest.appendleft(ev)  # formatted only when rendered
        try:
            data = event_data(ev)
        except BusProtocolError:
            return  # a malformed event changes nothing
        pid = getattr(data, "point_id", None) if data is not None else None
        if not isinstance(pid, str) or not pid:
            return  # not about a point (broker.*, vehicle.*) or a topic this version ignores
        p = self._point(pid)
        p.last_heard = max(p.last_heard or 0.0, ev.ts)
        self._apply_data(p, data)
        self._reindex(p)

    def _apply_data(self, p: PointView, data: EventData | None) -> None:
        match data:
            case PointStatus(estado=estado):
                p.apply_estado(estado)
            case PointOnline():
                p.online = True
            case PointOffline():
                p.online = False
            case ReservationCreated(vehicle_id=vid) if vid not in p.queue:
                self._set_queue(p, [*p.queue, vid])
            case ReservationCancelled(vehicle_id=vid) | ReservationExpired(vehicle_id=vid):
                if vid in p.queue:
                    self._set_queue(p, [v for v in p.queue if v != vid])
            case ChargingStarted(vehicle_id=vid, session_id=sid):
                if vid in p.queue:
                    self._set_queue(p, [v for v in p.queue if v != vid])
                p.vehicle = vid
                p.session_id = sid
                p.energy_kwh = 0.0
            case ChargingCompleted(session_id=sid) if p.session_id in (None, sid):
                p.vehicle = None
                p.session_id = None
                p.energy_kwh = None

    @property
    def latest(self) -> list[str]:
        """The latest events, newest first, one line each."""
        return [
            f"#{ev.seq} {format_timestamp(ev.ts)[11:23]} {ev.topic} "
            + " ".join(f"{k}={v}" for k, v in list(ev.data.items())[:4])
            for ev in self._latest
        ]

    def _expire(self, now: float) -> None:
        while self._recent and self._recent[0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    # --- paging ---------------------------------------------------------------------

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.points) // self.page_size))

    def next_page(self) -> None:
        self.page = min(self.page + 1, self.pages - 1)

    def prev_page(self) -> None:
        self.page = max(self.page - 1, 0)

    def first_page(self) -> None:
        self.page = 0

    def last_page(self) -> None:
        self.page = self.pages - 1

    def _slice(self, start: int, count: int) -> Iterator[PointView]:
        """Points ``start .. start+count`` in display order, without a full sort."""
        for state in STATES:
            ids = self._by_state[state]
            if start >= len(ids):
                start -= len(ids)
                continue
            for pid in ids[start : start + count]:
                yield self.points[pid]
                count -= 1
            start = 0
            if count <= 0:
                return

    # --- figures and rendering ------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {s: len(ids) for s, ids in self._by_state.items()}

    def rate(self, now: float) -> float:
        self._expire(now)
        return len(self._recent) / RATE_WINDOW_S

    def fit(self, height: int) -> int:
        """Rows of latest events that fit a screen of ``height`` lines; the page of
        points shrinks (never grows past ``--page-size``) so that both panes show."""
        latest = max(3, min(LATEST_EVENTS, (height - 12) // 3))
        chrome = 2 + 6 + 4  # header and states, the table's frame, the events' frame
        self.page_size = max(1, min(self.max_page_size, height - chrome - latest))
        return latest

    def render(self, now: float, height: int | None = None) -> RenderableType:
        latest_rows = self.fit(height) if height else LATEST_EVENTS
        self.page = min(self.page, self.pages - 1)
        c = self.counts()
        online = len(self.points) - c["offline"]
        header = Text.assemble(
            ("points ", "bold"), f"{len(self.points)}  ",
            ("online ", "bold"), f"{online}  ",
            ("charging ", "bold"), f"{c['carregando']}  ",
            ("queued ", "bold"), f"{self.queued}  ",
            ("events/s ", "bold"), f"{self.rate(now):.1f}  ",
            ("seq ", "bold"), f"{self.seq}",
            *(f"  {k} {v}" for k, v in self.figures.items()),
        )  # fmt: skip
        states = Text("  ".join(f"{s}: {n}" for s, n in c.items()), style="dim")
        table = Table(
            title=f"page {self.page + 1}/{self.pages} (n/p: page, g/G: first/last, q: quit)",
            expand=True,
        )
        for col in ("point", "state", "queue", "waiting", "charging", "kWh", "heard"):
            table.add_column(col, justify="right" if col in ("queue", "kWh", "heard") else "left")
        for p in self._slice(self.page * self.page_size, self.page_size):
            waiting = ", ".join(p.queue[:3]) + (f" +{len(p.queue) - 3}" if len(p.queue) > 3 else "")
            heard = f"{max(0.0, now - p.last_heard):.0f}s" if p.last_heard else "-"
            table.add_row(
                p.id,
                Text(p.state, style=STATE_STYLE[p.state]),
                str(len(p.queue)),
                waiting,
                p.vehicle or "",
                f"{p.energy_kwh:.2f}" if p.energy_kwh is not None else "",
                heard,
            )
        latest = Table(title="latest events", show_header=False, expand=True)
        latest.add_column("event", overflow="ellipsis", no_wrap=True)
        for line in list(self.latest)[:latest_rows]:
            latest.add_row(line)
        return Group(header, states, table, latest)

    def apply_all(self, events: Iterable[BusEvent], now: float) -> None:
        for ev in events:
            self.apply(ev, now)
