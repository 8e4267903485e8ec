"""The :class:`Core` facade: the API the broker service is written against.

Each public method takes ``now`` (epoch seconds) where time matters and
returns the effects to carry out, in order. See :mod:`broker.core` for the
theory of operation and ``docs/architecture.md`` ("Core API").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from broker.core import stations, vehicle_requests
from broker.core.config import CoreConfig
from broker.core.effects import Effect, Persist
from broker.core.engine import Engine
from broker.core.points import PointState
from broker.core.queues import Reservation
from broker.core.sessions import PENDING_PREFIX, PendingStart, Session
from common.errors import StoreError
from common.messages import StationToBroker, StatusDatagram, VehicleRequest
from common.timeutil import format_timestamp


class Core:
    """The broker's pure, synchronous state machine."""

    __slots__ = ("_eng", "_now")

    def __init__(self, config: CoreConfig, new_id: Callable[[str], str]) -> None:
        self._eng = Engine(config, new_id)
        self._now = 0.0

    @property
    def config(self) -> CoreConfig:
        return self._eng.cfg

    @property
    def last_seq(self) -> int:
        """The seq of the last event published (0 before any)."""
        return self._eng.seq

    # --- lifecycle ------------------------------------------------------------------

    def restore(
        self, records: Iterable[tuple[str, str, dict[str, Any]]], last_seq: int, now: float
    ) -> None:
        """Rebuild state from persisted records; restored points are offline until heard.

        Raises :class:`common.errors.StoreError` on a record it cannot read.
        """
        eng = self._eng
        self._now = now
        eng.seq = max(eng.seq, int(last_seq))
        reservations: list[Reservation] = []
        sessions: list[Session] = []
        starts: list[dict[str, Any]] = []
        try:
            for table, _key, value in records:
                if value is None:
                    continue
                if table == "point":
                    self._restore_point(value, now)
                elif table == "reservation":
                    reservations.append(Reservation.from_record(value))
                elif table == "session":
                    sessions.append(Session.from_record(value))
                elif table == "meta" and _key.startswith(PENDING_PREFIX):
                    starts.append(value)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise StoreError(f"unreadable record in the store: {exc!r}") from exc
        for r in sorted(reservations, key=lambda r: r.order):
            p = eng.points.get(r.point_id)
            if p is None or r.vehicle_id in eng.res_by_vehicle:
                continue
            p.queue.append(r)
            eng.res_by_vehicle[r.vehicle_id] = r
            eng.res_by_id[r.id] = r
            eng.order = max(eng.order, r.order)
            if r.deadline is not None:
                eng.timers.schedule(r.deadline, "expire", r.id, r.deadline)
        for s in sorted(sessions, key=lambda s: (s.billed_seq, s.started_at, s.id)):
            if s.ended_at is not None:
                eng.accounts.record(s)
                continue
            p = eng.points.get(s.point_id)
            if p is None:
                continue
            eng.sessions[s.id] = s
            eng.session_by_vehicle[s.vehicle_id] = s
            p.session = s
        try:
            for v in starts:
                self._restore_start(v, now)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"unreadable record in the store: {exc!r}") from exc
        for p in eng.points.values():
            if p.queue or p.session is not None:
                eng.timers.schedule(now + eng.cfg.offline_grace_s, "grace", p.id, now)

    def _restore_start(self, v: dict[str, Any], now: float) -> None:
        """A start sent before a crash whose ack never came back.

        The station may be charging: the start waits for its ack (or its
        ``session_complete``) for one grace period, so that the session is
        billed when the station reports it, then fails as usual.
        """
        eng = self._eng
        pend = PendingStart.from_record(v, now + eng.cfg.offline_grace_s)
        p = eng.points.get(pend.point_id)
        if p is None or p.pending is not None or p.session is not None:
            return
        if pend.session_id in eng.sessions or pend.session_id in eng.accounts.billed:
            return
        eng.pending[pend.cmd_id] = pend
        p.pending = pend
        eng.timers.schedule(pend.deadline, "ack", pend.cmd_id)

    def _restore_point(self, v: dict[str, Any], now: float) -> None:
        eng = self._eng
        p = PointState(
            id=str(v["id"]),
            latitude=float(v["latitude"]),
            longitude=float(v["longitude"]),
            potencia_kw=float(v["potencia_kw"]),
            preco_kwh=float(v["preco_kwh"]),
            interval_s=float(v["interval_s"]),
        )
        p.window_s = eng.window(p.interval_s)
        p.unusable_since = now
        eng.points[p.id] = p
        eng.index.put(p.id, p.latitude, p.longitude)

    def start(self, now: float) -> list[Effect]:
        """Publish ``broker.started`` (call once, after :meth:`restore`)."""
        self._now = now
        fx: list[Effect] = [Persist("meta", "started_at", {"at": now})]
        self._eng.publish(
            fx,
            "broker.started",
            {"points": len(self._eng.points), "reservations": len(self._eng.res_by_id)},
            now,
        )
        return fx

    # --- inputs ---------------------------------------------------------------------

    def handle_request(
        self, conn: int, vehicle_id: str, request: VehicleRequest, now: float
    ) -> list[Effect]:
        """A validated vehicle request from connection ``conn``."""
        self._now = now
        return vehicle_requests.handle(self._eng, conn, vehicle_id, request, now)

    def handle_datagram(self, datagram: StatusDatagram, now: float) -> list[Effect]:
        """A validated status datagram (the hot path)."""
        self._now = now
        return stations.handle_datagram(self._eng, datagram, now)

    def handle_station(self, point_id: str, message: StationToBroker, now: float) -> list[Effect]:
        """A message from the station DEALER whose routing id is ``point_id``."""
        self._now = now
        return stations.handle_station(self._eng, point_id, message, now)

    def station_unreachable(self, point_id: str, now: float) -> list[Effect]:
        """The ROUTER could not deliver to ``point_id``."""
        self._now = now
        return stations.station_unreachable(self._eng, point_id, now)

    def vehicle_connected(self, vehicle_id: str, now: float) -> list[Effect]:
        self._now = now
        fx: list[Effect] = []
        self._eng.publish(fx, "vehicle.connected", {"vehicle_id": vehicle_id}, now)
        return fx

    def vehicle_disconnected(self, vehicle_id: str, now: float) -> list[Effect]:
        self._now = now
        fx: list[Effect] = []
        self._eng.publish(fx, "vehicle.disconnected", {"vehicle_id": vehicle_id}, now)
        return fx

    # --- timers ---------------------------------------------------------------------

    def next_due(self) -> float | None:
        """The earliest instant at which :meth:`tick` has work, or None."""
        return self._eng.next_due()

    def tick(self, now: float) -> list[Effect]:
        """Do all work due at ``now``: expiries, offline windows, grace ends, ack timeouts."""
        self._now = now
        return self._eng.tick(now)

    # --- views ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """``{"seq", "points", "queues", "sessions"}`` consistent as of ``seq``.

        Points are sorted by id, running sessions by start time; each point also
        has ``vehicle_id``, ``session_id`` and ``last_heard`` (when the station was
        last heard from, or None).
        """
        eng = self._eng
        points = []
        for _pid, p in sorted(eng.points.items()):
            view = eng.point_view(p, None, self._now)
            view["vehicle_id"] = p.session.vehicle_id if p.session is not None else None
            view["session_id"] = p.session.id if p.session is not None else None
            view["last_heard"] = format_timestamp(p.last_heard) if p.last_heard else None
            points.append(view)
        queues = {
            pid: [r.view(i + 1) for i, r in enumerate(p.queue)]
            for pid, p in eng.points.items()
            if p.queue
        }
        running = sorted(eng.sessions.values(), key=lambda s: (s.started_at, s.id))
        sessions = [s.view() for s in running]
        return {"seq": eng.seq, "points": points, "queues": queues, "sessions": sessions}

    def accounts(self) -> dict[str, Any]:
        """Every account, as ``{vehicle_id: extrato data}``."""
        return self._eng.accounts.all_statements()

    @property
    def points_refused(self) -> int:
        """New point ids dropped because the point cap was reached."""
        return self._eng.counters["points_refused"]

    def stats(self) -> dict[str, Any]:
        eng = self._eng
        return {
            "points": len(eng.points),
            "points_online": eng.points_online,
            "points_by_state": dict(Counter(p.estado for p in eng.points.values())),
            "sessions_active": len(eng.sessions),
            "reservations": len(eng.res_by_id),
            "pending_starts": len(eng.pending),
            "queues": {pid: len(p.queue) for pid, p in eng.points.items() if p.queue},
            "timers": len(eng.timers),
            "last_seq": eng.seq,
            **eng.counters,
        }
