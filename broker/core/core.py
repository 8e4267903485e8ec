"""The :class:`Core` front: the API the broker service is written against.

Each public method takes ``now`` (epoch seconds) where time matters and
returns the effects to carry out, in order. See :mod:`broker.core` for the
theory of operation and ``docs/architecture.md`` ("Core API").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec

from broker.core import stations, tariff_ops, vehicle_requests
from broker.core.config import CoreConfig
from broker.core.effects import Effect, Persist
from broker.core.engine import Engine
from broker.core.points import PointState
from broker.core.queues import Reservation
from broker.core.sessions import PENDING_PREFIX, PendingStart, Session
from broker.core.site_defs import SITE_PREFIX, SiteDef, check_site
from broker.core.vehicle_auth import AuthMode, VehicleAuth
from common.errors import EVError, InvalidRequest, SiteRefused, StoreError, UnknownPoint
from common.events import BrokerStarted, VehicleConnected, VehicleDisconnected
from common.messages import StationToBroker, StatusDatagram, VehicleRequest
from common.tariff_book import ASSIGNMENTS_KEY

MAX_REASON: Final = 200  # characters of an out-of-service reason


class Core:
    """The broker's pure, synchronous state machine."""

    __slots__ = ("_datagrams", "_eng", "_vehicle_auth")

    def __init__(self, config: CoreConfig, new_id: Callable[[str], str]) -> None:
        self._eng = Engine(config, new_id)
        self._datagrams = 0
        self._vehicle_auth: VehicleAuth | None = None

    @property
    def config(self) -> CoreConfig:
        return self._eng.config

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
        eng.restore_seq(last_seq)
        reservations: list[Reservation] = []
        sessions: list[Session] = []
        starts: list[dict[str, Any]] = []
        try:
            for table, key, value in records:
                if value is None:
                    continue
                if table == "point":
                    eng.restore_point(_point_from_record(value), now)
                elif table == "reservation":
                    reservations.append(Reservation.from_record(value))
                elif table == "session":
                    sessions.append(Session.from_record(value))
                elif table == "meta" and key.startswith(PENDING_PREFIX):
                    starts.append(value)
                elif table == "tariff":
                    eng.tariffs.restore_tariff(value)
                elif table == "meta" and key == ASSIGNMENTS_KEY:
                    eng.tariffs.restore_assignments(value)
                elif table == "meta" and key.startswith(SITE_PREFIX):
                    eng.sites.restore(SiteDef.from_record(value), now)
        except (KeyError, TypeError, ValueError, ArithmeticError, EVError) as exc:
            raise StoreError(f"unreadable record in the store: {exc!r}") from exc
        for r in sorted(reservations, key=lambda r: r.order):
            eng.restore_reservation(r)
        for s in sorted(sessions, key=lambda s: (s.billed_seq, s.started_at, s.id)):
            eng.restore_session(s)
        try:
            # A start sent before a crash whose ack never came back: the station may
            # be charging, so the start waits one grace period for its ack (or its
            # ``session_complete``), so that the session is billed when the station
            # reports it, then fails as usual.
            for v in starts:
                eng.restore_start(PendingStart.from_record(v, now + eng.config.offline_grace_s))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"unreadable record in the store: {exc!r}") from exc
        eng.restore_graces(now)

    def start(self, now: float) -> list[Effect]:
        """Publish ``broker.started`` (call once, after :meth:`restore`)."""
        stats = self._eng.stats()
        fx: list[Effect] = [Persist("meta", "started_at", {"at": now})]
        self._eng.publish(
            fx, BrokerStarted(points=stats["points"], reservations=stats["reservations"]), now
        )
        return fx

    # --- inputs ---------------------------------------------------------------------

    def handle_request(
        self,
        conn: int,
        vehicle_id: str,
        request: VehicleRequest,
        now: float,
        address: str | None = None,
    ) -> list[Effect]:
        """A validated vehicle request from connection ``conn`` at network ``address``.

        The address is what the per-address caps count (``max_reservations_per_address``),
        so that they hold across every edge or gateway that passes it in.
        """
        return vehicle_requests.handle(self._eng, conn, vehicle_id, request, now, address)

    def handle_datagram(
        self, datagram: StatusDatagram, now: float, signed_ts: float | None = None
    ) -> list[Effect]:
        """A validated status datagram (the hot path).

        ``signed_ts``: the datagram's ``ts`` when the status edge checked its signature.
        An out-of-order datagram is refused with the single effect ``Rejected("status",
        StaleDatagram | ReplayedDatagram)`` (see :func:`broker.core.stations.handle_datagram`).
        """
        self._datagrams += 1
        return stations.handle_datagram(self._eng, datagram, now, signed_ts)

    def handle_station(self, point_id: str, message: StationToBroker, now: float) -> list[Effect]:
        """A message from the station DEALER whose routing id is ``point_id``."""
        return stations.handle_station(self._eng, point_id, message, now)

    def station_unreachable(self, point_id: str, now: float) -> list[Effect]:
        """The ROUTER could not deliver to ``point_id``."""
        return stations.station_unreachable(self._eng, point_id, now)

    def start_in_progress(self, vehicle_id: str) -> tuple[str, str] | None:
        """``(session_id, point_id)`` of the start sent for ``vehicle_id``, not acked yet."""
        pend = self._eng.sessions.pending_of(vehicle_id)
        return None if pend is None else (pend.session_id, pend.point_id)

    def session_started(self, vehicle_id: str, session_id: str) -> bool:
        """Whether session ``session_id`` of ``vehicle_id`` started (running or billed)."""
        if self._eng.running_session(session_id) is not None:
            return True
        return any(
            line.session_id == session_id for line in self._eng.statement(vehicle_id).sessoes
        )

    def battery_report(
        self, vehicle_id: str, level: float, latitude: float, longitude: float, now: float
    ) -> list[Effect]:
        """A ``bateria`` answered by a vehicle gateway reported ``level`` (low-battery rule)."""
        fx: list[Effect] = []
        self._eng.battery_report(vehicle_id, level, latitude, longitude, now, fx)
        return fx

    def vehicle_connected(self, vehicle_id: str, now: float) -> list[Effect]:
        fx: list[Effect] = []
        self._eng.publish(fx, VehicleConnected(vehicle_id=vehicle_id), now)
        return fx

    def vehicle_disconnected(self, vehicle_id: str, now: float) -> list[Effect]:
        fx: list[Effect] = []
        self._eng.publish(fx, VehicleDisconnected(vehicle_id=vehicle_id), now)
        return fx

    def set_availability(
        self, point_id: str, available: bool, reason: str, by: str, now: float
    ) -> tuple[int, list[Effect]]:
        """The history op ``set_availability`` from an operator credential ``by``.

        Returns the seq after every event of the change and the effects; the reply
        may go out only once the effects are committed. Raises
        :class:`common.errors.UnknownPoint` or :class:`common.errors.InvalidRequest`
        (``field="reason"``), changing nothing.
        """
        fx: list[Effect] = []
        p = self._eng.point(point_id)
        if p is None:
            raise UnknownPoint(f"unknown point {point_id!r}")
        reason = reason.strip()
        if not available and not reason:
            raise InvalidRequest("reason: required to take a point out of service", field="reason")
        if len(reason) > MAX_REASON:
            raise InvalidRequest(f"reason: at most {MAX_REASON} characters", field="reason")
        self._eng.set_availability(p, available, reason, by, now, fx)
        return self._eng.seq, fx

    # --- sites (energy.md) ----------------------------------------------------------

    def set_site(
        self, name: Any, limit_kw: Any, points: Any, min_kw: Any, by: str, now: float
    ) -> tuple[dict[str, Any], list[Effect]]:
        """The history op ``set_site``: define or change a site (operator ``by``).

        Returns the reply (``{"ok": True, "seq": S, "site": {...}}``) and the effects,
        to commit before replying. Raises :class:`common.errors.SiteRefused` naming the
        problem, changing nothing.
        """
        fx: list[Effect] = []
        eng = self._eng
        d = check_site(
            name,
            limit_kw,
            points,
            min_kw,
            eng.sites.definitions(),
            {p.id: p.limites for p in eng.points},
        )
        running = [
            (sid, vid, pid, started, power) for sid, vid, pid, started, power in eng.live_sessions()
        ]
        eng.sites.define(d, by, running, now, fx)
        return {"ok": True, "seq": eng.seq, "site": d.record()}, fx

    def remove_site(self, name: Any, by: str, now: float) -> tuple[dict[str, Any], list[Effect]]:
        """The history op ``remove_site``: its points are unlimited again (SiteRefused
        for a site that does not exist)."""
        fx: list[Effect] = []
        if not isinstance(name, str) or self._eng.sites.definition(name) is None:
            raise SiteRefused(f"unknown site {name!r}")
        self._eng.sites.remove(name, by, now, fx)
        return {"ok": True, "seq": self._eng.seq}, fx

    def tariffs(
        self,
        action: Any,
        tariffs_json: Any,
        tariff_id: Any,
        points: Any,
        by: str,
        now: float,
    ) -> tuple[dict[str, Any], list[Effect]]:
        """The history op ``tariffs`` from operator ``by`` (docs/tariffs.md): set, assign,
        remove or list. Like :meth:`set_availability`, the reply may go out only once
        the effects are committed."""
        return tariff_ops.handle(self._eng, action, tariffs_json, tariff_id, points, by, now)

    def set_session_power(self, session_id: str, power_kw: float, now: float) -> bool:
        """Record that a running session's allocated power is ``power_kw`` from ``now``
        on: its charging periods (and the tariff's power restrictions) split there."""
        return self._eng.set_session_power(session_id, power_kw, now)

    def sites(self) -> dict[str, Any]:
        """The history op ``sites``: every site with its figures and sessions."""
        return {"sites": self._eng.sites.view(), "seq": self._eng.seq}

    # --- timers ---------------------------------------------------------------------

    def next_due(self) -> float | None:
        """The earliest instant at which :meth:`tick` has work, or None."""
        return self._eng.next_due()

    def tick(self, now: float) -> list[Effect]:
        """Do all work due at ``now``: expiries, offline windows, grace ends, ack timeouts."""
        return self._eng.tick(now)

    # --- views ----------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """``{"seq", "points", "queues", "sessions"}`` consistent as of ``seq``.

        Points are sorted by id, running sessions by start time; waiting
        estimates are computed for ``now``.
        """
        return self._eng.snapshot(now)

    def vehicle_auth(
        self, mode: AuthMode, new_token: Callable[[], str], max_registrations: int
    ) -> VehicleAuth:
        """The vehicle gate this core owns (made once): its per-address and per-id counters
        live beside the core's state and read its history, whatever edge or gateway
        passes requests in (with their address)."""
        if self._vehicle_auth is None:
            self._vehicle_auth = VehicleAuth(
                mode,
                new_token,
                has_history=self.has_history,
                max_registrations=max_registrations,
            )
        return self._vehicle_auth

    def has_history(self, vehicle_id: str) -> bool:
        """Whether ``vehicle_id`` has a reservation, a session or a bill (vehicle identity)."""
        return self._eng.has_history(vehicle_id)

    def accounts(self) -> dict[str, Any]:
        """Every account, as ``{vehicle_id: extrato data}`` (plain data)."""
        # (ignored below) msgspec types to_builtins as Any; a dict of statements gives a dict
        return msgspec.to_builtins(self._eng.all_statements())  # type: ignore[no-any-return]

    @property
    def points_refused(self) -> int:
        """New point ids dropped because the point cap was reached."""
        return self._eng.counter("points_refused")

    def stats(self) -> dict[str, Any]:
        stats = self._eng.stats()
        refused = stats["datagrams_stale"] + stats["datagrams_replayed"]
        return {**stats, "datagrams": self._datagrams - refused}


def _point_from_record(v: dict[str, Any]) -> PointState:
    return PointState(
        id=str(v["id"]),
        latitude=float(v["latitude"]),
        longitude=float(v["longitude"]),
        potencia_kw=float(v["potencia_kw"]),
        preco_kwh=float(v["preco_kwh"]),
        interval_s=float(v["interval_s"]),
        out_of_service=v.get("out_of_service") is True,
        oos_reason=str(v.get("reason") or ""),
        oos_by=str(v.get("by") or ""),
        limites=v.get("limites") is True,
    )
