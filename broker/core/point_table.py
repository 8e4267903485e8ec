"""The points table: every :class:`PointState`, its spatial index and cached views.

:class:`PointTable` is the only writer of a point's own fields: what a station
reports (static facts, the datagram ordering state, the reported state),
liveness (``online``, ``last_heard``, the offline timer) and the out-of-service
flag. The broker-owned links (``queue``, ``session``, ``pending``) are written
by the reservation and session tables, and ``usable``/``estado`` by the
engine's ``refresh`` funnel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Final, Literal

from broker.core.effects import Effect, Persist
from broker.core.points import DEFAULT_INTERVAL_S, PointState, derive_estado
from broker.core.read_path import PointReads
from broker.core.shared import Shared
from broker.core.timers import OfflineCheck
from common.events import PointAvailability, PointOffline, PointOnline, PointRegistered
from common.messages import StatusDatagram
from common.replies import PointView
from common.timeutil import format_timestamp

OFFLINE_SLOT_S: Final = 0.25


def offline_slot(t: float) -> float:
    """Offline checks are grouped on a 0.25 s grid, so that many points share a wake-up."""
    return math.ceil(t / OFFLINE_SLOT_S) * OFFLINE_SLOT_S


def sane(value: float | None) -> float | None:
    """A reported power or price, or None when it is not a finite non-negative number."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return value


# What a status datagram from a known point amounts to (plain ints: this is the hot
# path, and an enum member costs a class attribute lookup per datagram).
Heard = Literal[0, 1, 2, 3]
SAME: Final = 0  # nothing but liveness (and energy) changed: the hot path
CHANGED: Final = 1  # something else changed: the slow path applies it
OUT_OF_ORDER: Final = 2  # not newer than what the point already sent
UNPLUGGED: Final = 3  # the vehicle of a parked session left: bill it (and go slow)


class PointTable:
    """Every point, indexed by id and by position."""

    def __init__(self, shared: Shared) -> None:
        self._s = shared
        self._rows: dict[str, PointState] = {}
        #: the point with this id, or None (the table's own lookup: no call overhead
        #: on the datagram hot path)
        self.get: Callable[[str], PointState | None] = self._rows.get
        #: the read path over this table (the vehicle gateways' replicas have their own)
        self.reads = PointReads(self._rows, shared.cfg.queue_capacity)
        self.reads.tariffs = shared.tariffs  # views show tariffs, queries estimate costs
        self._index = self.reads.index
        self.online = 0  # points online now

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[PointState]:
        return iter(self._rows.values())

    def __getitem__(self, point_id: str) -> PointState:
        return self._rows[point_id]

    def sorted(self) -> list[PointState]:
        return [p for _pid, p in sorted(self._rows.items())]

    # --- reading --------------------------------------------------------------------

    def window(self, interval_s: float) -> float:
        return max(self._s.cfg.offline_after_s, 3.0 * interval_s)

    def nearest(
        self, latitude: float, longitude: float, k: int, max_km: float | None, usable_only: bool
    ) -> list[tuple[float, PointState]]:
        """Up to ``k`` ``(distance_km, point)`` pairs, nearest first."""
        return self.reads.nearest(latitude, longitude, k, max_km, usable_only)

    def view(self, p: PointState, distance: float | None, now: float) -> PointView:
        """The protocol's Point object (``distance`` omitted when None)."""
        return self.reads.point_view(p, distance, now)

    def encoded(self, hits: list[tuple[float, PointState]], now: float) -> bytes:
        """``[Point, ...]`` as JSON for ``(distance_km, point)`` hits, from cached views."""
        return self.reads.encoded_points(hits, now)

    def ids(self) -> list[str]:
        return list(self._rows)

    # --- registering ----------------------------------------------------------------

    def may_register(self) -> bool:
        """False (and counted) when no new point may be registered: the point cap is reached."""
        if len(self._rows) < self._s.cfg.max_points:
            return True
        self._s.counters["points_refused"] += 1
        return False

    def register(
        self,
        point_id: str,
        latitude: float,
        longitude: float,
        potencia_kw: float | None,
        preco_kwh: float | None,
        interval_s: float | None,
        now: float,
        fx: list[Effect],
    ) -> PointState:
        """A point heard of for the first time: index, persist, ``point.registered``."""
        p = PointState(id=point_id, latitude=latitude, longitude=longitude)
        potencia_kw, preco_kwh, interval_s = sane(potencia_kw), sane(preco_kwh), sane(interval_s)
        if interval_s == 0:
            interval_s = None
        if potencia_kw is not None:
            p.potencia_kw = potencia_kw
        if preco_kwh is not None:
            p.preco_kwh = preco_kwh
        p.interval_s = interval_s if interval_s is not None else DEFAULT_INTERVAL_S
        self.add(p, now, fx)
        return p

    def add(self, p: PointState, now: float, fx: list[Effect]) -> None:
        """Index, persist and publish a new point."""
        p.window_s = self.window(p.interval_s)
        self._rows[p.id] = p
        self._index.put(p.id, p.latitude, p.longitude)
        fx.append(Persist("point", p.id, p.static_record()))
        self._s.log.publish(
            fx,
            PointRegistered(
                point_id=p.id,
                latitude=p.latitude,
                longitude=p.longitude,
                potencia_kw=p.potencia_kw,
                preco_kwh=p.preco_kwh,
            ),
            now,
        )

    def restore(self, p: PointState, now: float) -> None:
        """A persisted point: offline until heard (``indisponivel`` if out of service), its
        grace period starting at ``now``."""
        p.window_s = self.window(p.interval_s)
        p.unusable_since = now
        p.estado = derive_estado(p)
        self._rows[p.id] = p
        self._index.put(p.id, p.latitude, p.longitude)

    # --- station reports ------------------------------------------------------------

    def first_report(self, p: PointState, d: StatusDatagram, signed_ts: float | None) -> None:
        """A point registered by its first datagram takes that datagram's state."""
        p.boot_id = d.boot_id
        p.dgram_seq = d.seq
        if signed_ts is not None:
            p.dgram_ts = signed_ts
        p.rep_available = d.available
        p.rep_estado = d.estado
        p.rep_vehicle = d.vehicle_id
        p.rep_energy = d.energia_kwh

    def take_datagram(
        self, p: PointState, d: StatusDatagram, now: float, signed_ts: float | None
    ) -> Heard:
        """Apply the ordering rule and what the hot path keeps (liveness, energy).

        Within the point's current ``boot_id`` a ``seq`` not above the last one seen
        is out of order; a new ``boot_id`` starts over (unless the datagram is signed
        and not later than the last accepted signed one). A new boot while a session
        runs is left to the slow path (the session may be lost).
        """
        seq = d.seq
        if seq is not None:
            boot = d.boot_id
            if boot == p.boot_id:
                last = p.dgram_seq
                if last is not None and seq <= last:
                    return OUT_OF_ORDER
                p.dgram_seq = seq
            elif signed_ts is not None and signed_ts <= p.dgram_ts:
                return OUT_OF_ORDER
            elif boot is not None:
                if p.session is not None:
                    if signed_ts is not None:
                        p.dgram_ts = signed_ts
                    return CHANGED
                p.boot_id = boot
                p.dgram_seq = seq
        if signed_ts is not None:
            p.dgram_ts = signed_ts
        p.last_heard = now
        parked = p.session
        if parked is not None and parked.charged_at is not None and d.conector_livre is not False:
            return UNPLUGGED
        energy = d.energia_kwh
        if energy is not None:
            p.rep_energy = energy
            s = p.session
            if s is not None and (d.session_id is None or d.session_id == s.id):
                s.energy_reported = energy
        if (
            p.online
            and d.available is p.rep_available
            and d.estado == p.rep_estado
            and d.vehicle_id == p.rep_vehicle
            and d.latitude == p.latitude
            and d.longitude == p.longitude
            and (d.potencia_kw is None or d.potencia_kw == p.potencia_kw)
            and (d.preco_kwh is None or d.preco_kwh == p.preco_kwh)
            and (d.interval_s is None or d.interval_s == p.interval_s)
        ):
            if p.offline_timer_at is None:
                self.arm_offline(p, now)
            return SAME
        return CHANGED

    def new_boot(self, p: PointState, boot_id: str) -> bool:
        """A new ``boot_id`` resets the stale filter; False when it is not new."""
        if not boot_id or boot_id == p.boot_id:
            return False
        p.boot_id = boot_id
        p.dgram_seq = None
        return True

    def greeted(self, p: PointState, confirms_holds: bool, availability: bool) -> None:
        """The station said ``hello``: it answers commands, with these capabilities."""
        p.commands = True
        p.confirms_holds = confirms_holds
        p.availability_notices = availability

    def unreachable(self, p: PointState) -> None:
        """The station has no command connection (until its next ``hello``)."""
        p.commands = p.confirms_holds = False

    def set_boot(self, p: PointState, boot_id: str | None, seq: int | None) -> None:
        p.boot_id = boot_id
        p.dgram_seq = seq

    def set_limites(self, p: PointState, limites: bool, fx: list[Effect]) -> None:
        """What the station's hello says about ``limit`` commands (persisted when it changes)."""
        if p.limites != limites:
            p.limites = limites
            fx.append(Persist("point", p.id, p.static_record()))

    def set_seq(self, p: PointState, seq: int) -> None:
        p.dgram_seq = seq

    def set_reported(self, p: PointState, d: StatusDatagram) -> None:
        """The station's latest reported state."""
        p.rep_available = d.available
        p.rep_estado = d.estado
        p.rep_vehicle = d.vehicle_id

    def update_static(
        self,
        p: PointState,
        latitude: float,
        longitude: float,
        potencia_kw: float | None,
        preco_kwh: float | None,
        interval_s: float | None,
        fx: list[Effect],
    ) -> None:
        """Static facts follow the latest report; persisted when something changed."""
        potencia_kw, preco_kwh, interval_s = sane(potencia_kw), sane(preco_kwh), sane(interval_s)
        if interval_s == 0:
            interval_s = None
        changed = False
        if latitude != p.latitude or longitude != p.longitude:
            p.latitude, p.longitude = latitude, longitude
            self._index.put(p.id, latitude, longitude)
            changed = True
        if potencia_kw is not None and potencia_kw != p.potencia_kw:
            p.potencia_kw = potencia_kw
            changed = True
        if preco_kwh is not None and preco_kwh != p.preco_kwh:
            p.preco_kwh = preco_kwh
            changed = True
        if interval_s is not None and interval_s != p.interval_s:
            p.interval_s = interval_s
            p.window_s = self.window(interval_s)
            changed = True
        if changed:
            fx.append(Persist("point", p.id, p.static_record()))

    # --- liveness -------------------------------------------------------------------

    def arm_offline(self, p: PointState, now: float) -> None:
        """Arm the point's offline timer unless one is armed (it re-arms itself lazily)."""
        if p.offline_timer_at is None:
            p.offline_timer_at = offline_slot(now + p.window_s)
            self._s.timers.schedule(p.offline_timer_at, OfflineCheck(p.id))

    def heard(self, p: PointState, now: float, fx: list[Effect]) -> None:
        """A sign of life: refresh ``last_heard``; an offline point comes back online."""
        p.last_heard = now
        self.arm_offline(p, now)
        if not p.online:
            p.online = True
            self.online += 1
            self._s.log.publish(fx, PointOnline(point_id=p.id), now)

    def offline_check(self, p: PointState, now: float) -> bool:
        """The offline timer fired: True when ``p`` has just gone offline (published).

        Heard within its window, the point re-arms the timer at ``last_heard + window``.
        """
        p.offline_timer_at = None
        if not p.online:
            return False
        due = p.last_heard + p.window_s
        if due > now:
            p.offline_timer_at = due = offline_slot(due)
            self._s.timers.schedule(due, OfflineCheck(p.id))
            return False
        p.online = False
        self.online -= 1
        return True

    def publish_offline(self, p: PointState, now: float, fx: list[Effect]) -> None:
        self._s.log.publish(
            fx, PointOffline(point_id=p.id, last_heard=format_timestamp(p.last_heard)), now
        )

    # --- operators ------------------------------------------------------------------

    def set_out_of_service(
        self, p: PointState, available: bool, reason: str, by: str, now: float, fx: list[Effect]
    ) -> bool:
        """Persist and publish an operator's decision; False when nothing changes."""
        out = not available
        reason = reason if out else ""
        if p.out_of_service == out and p.oos_reason == reason:
            return False
        p.out_of_service, p.oos_reason, p.oos_by = out, reason, by if out else ""
        fx.append(Persist("point", p.id, p.static_record()))
        self._s.log.publish(
            fx, PointAvailability(point_id=p.id, available=available, reason=reason, by=by), now
        )
        return True
