"""The gateway's replica of the points: a snapshot, then every event, gap-free by seq.

Sans-IO: :class:`Replica` is a :class:`broker.consumers.subscriber.Sink`; the subscriber
does the ordering (snapshot, then events above its seq, gaps refilled from
history) and this module only applies what it is handed to a
:class:`broker.core.read_path.PointReads`, the structure the core answers
``bateria`` and ``consulta`` from. What a query shows of a point (estado,
queue, figures, out of service) comes from the events that changed it:

* ``point.registered`` creates the point (or moves it), ``point.status``
  gives its ``estado``, ``point.availability`` its out-of-service state,
  ``point.online``/``point.offline`` its liveness;
* ``reservation.created`` appends to its queue (the ETA the wait estimate
  uses), ``reservation.cancelled``/``expired`` and ``charging.started`` take
  the reservation out; ``charging.started``/``completed`` set and clear the
  running session.

Only events published after their commit reach the bus, so a replica never
shows state that is not durable. What the bus does not carry (the energy a
running session has taken so far, a start waiting for its ack) is not in the
replica: a wait estimate of a point that is charging counts the whole session
(docs/architecture.md, "Vehicle gateways").
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from typing import Any

from broker.core.points import PointState
from broker.core.queues import Reservation
from broker.core.read_path import PointReads
from broker.core.sessions import Session, to_decimal
from common.messages import BusEvent
from common.tariff_book import TariffBook
from common.tariffs import TariffInvalid, tariff_from_builtins
from common.timeutil import parse_timestamp, site_zone

log = logging.getLogger(__name__)

_UNUSABLE = frozenset({"offline", "indisponivel"})


class Replica:
    """The points of the core as of ``applied_seq``; a subscriber :class:`Sink`."""

    def __init__(self, queue_capacity: int = 5) -> None:
        self.reads = PointReads({}, queue_capacity)
        self.applied_seq = -1  # no snapshot yet
        self.malformed = 0
        self._order = 0
        self._on_applied: list[Callable[[int], None]] = []
        #: session -> kW its site gives it, and each site's sessions (site.allocation)
        self._allowed: dict[str, float] = {}
        self._site_sessions: dict[str, set[str]] = {}

    @property
    def ready(self) -> bool:
        return self.applied_seq >= 0

    def on_applied(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(applied_seq)`` after every batch (reads waiting for a seq)."""
        self._on_applied.append(callback)

    def set_capacity(self, queue_capacity: int) -> None:
        """The core's queue capacity (from its welcome): the views are built for it."""
        if queue_capacity != self.reads.queue_capacity:
            tariffs = self.reads.tariffs
            self.reads = PointReads(self.reads.points, queue_capacity)
            self.reads.tariffs = tariffs
            for p in self.reads.points.values():
                self.reads.index.put(p.id, p.latitude, p.longitude)

    # --- Sink --------------------------------------------------------------------------

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        # hundreds of thousands of objects that live as long as the replica: no GC passes
        # while they are made (they halve the load time)
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._load(snapshot)
        finally:
            if enabled:
                gc.enable()
        self._notify()

    def _load(self, snapshot: dict[str, Any]) -> None:
        reads = PointReads({}, self.reads.queue_capacity)
        points = reads.points
        for view in snapshot.get("points") or ():
            try:
                p = _point_from_view(view)
            except (KeyError, TypeError, ValueError):
                self.malformed += 1
                continue
            points[p.id] = p
        reads.index.load((p.id, p.latitude, p.longitude) for p in points.values())
        for pid, queue in (snapshot.get("queues") or {}).items():
            queued = points.get(pid)
            if queued is None:
                continue
            for view in queue:
                try:
                    queued.queue.append(self._reservation_from_view(view))
                except (KeyError, TypeError, ValueError):
                    self.malformed += 1
        for view in snapshot.get("sessions") or ():
            try:
                s = _session_from_view(view)
            except (KeyError, TypeError, ValueError):
                self.malformed += 1
                continue
            charging = points.get(s.point_id)
            if charging is not None:
                charging.session = s
        tariffs = snapshot.get("tariffs")
        if isinstance(tariffs, dict):
            try:
                reads.tariffs = TariffBook.from_snapshot(tariffs)
            except (KeyError, TypeError, ValueError, TariffInvalid):
                self.malformed += 1
        self.reads = reads
        self.applied_seq = int(snapshot.get("seq", 0))

    def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        for event in events:
            try:
                self.apply(event)
            except (KeyError, TypeError, ValueError):
                self.malformed += 1
                log.warning("replica: malformed %s event seq %d", event.topic, event.seq)
        self.applied_seq = applied_seq
        self._notify()

    def _notify(self) -> None:
        for callback in self._on_applied:
            callback(self.applied_seq)

    # --- events ------------------------------------------------------------------------

    def apply(self, event: BusEvent) -> None:
        """Apply one event to the points (events of other topics change nothing)."""
        d = event.data
        topic = event.topic
        points = self.reads.points
        if topic == "point.registered":
            pid = str(d["point_id"])
            lat, lon = _number(d["latitude"]), _number(d["longitude"])
            p = points.get(pid)
            if p is None:
                p = points[pid] = PointState(id=pid, latitude=lat, longitude=lon)
            p.latitude, p.longitude = lat, lon
            p.potencia_kw, p.preco_kwh = _number(d["potencia_kw"]), _number(d["preco_kwh"])
            self.reads.index.put(pid, lat, lon)
            return
        if topic == "tariff.updated":
            self._tariff_updated(d)
            return
        if topic == "site.allocation":
            self._allocation(d)
            return
        p = points.get(str(d.get("point_id", "")))
        if p is None:
            return
        if topic == "point.status":
            p.estado = d["estado"]
            p.usable = p.estado not in _UNUSABLE
        elif topic == "point.availability":
            p.out_of_service = d["available"] is not True
            p.oos_reason = str(d["reason"]) if p.out_of_service else ""
            p.oos_by = str(d["by"]) if p.out_of_service else ""
        elif topic == "point.online":
            p.online = True
        elif topic == "point.offline":
            p.online = False
        elif topic == "reservation.created":
            self._order += 1
            p.queue.append(
                Reservation(
                    id=str(d["reservation_id"]),
                    vehicle_id=str(d["vehicle_id"]),
                    point_id=p.id,
                    created_at=event.ts,
                    eta_s=float(d["tempo_estimado"]) * 60.0,
                    order=self._order,
                )
            )
        elif topic == "reservation.turn":
            for r in p.queue:
                if r.id == d["reservation_id"]:
                    r.turn_started_at, r.deadline = event.ts, float(d["deadline"])
        elif topic in ("reservation.cancelled", "reservation.expired"):
            _drop(p, str(d["reservation_id"]))
        elif topic == "charging.started":
            if d.get("reservation_id"):
                _drop(p, str(d["reservation_id"]))
            p.session = Session(
                id=str(d["session_id"]),
                vehicle_id=str(d["vehicle_id"]),
                point_id=p.id,
                started_at=event.ts,
                nivel_inicial=float(d["nivel_bateria"]),
                nivel_carregar=float(d["nivel_carregar"]),
                capacidade_kwh=float(d["capacidade_kwh"]),
                payment_method=str(d["payment_method"]),
                price_kwh=to_decimal(float(d["price_kwh"])),
                reservation_id=d.get("reservation_id"),
                boot_id=None,
                allowed_kw=self._allowed.get(str(d["session_id"])),
            )
        elif (
            topic == "charging.completed"
            and p.session is not None
            and p.session.id == d["session_id"]
        ):
            p.session = None
        if topic == "charging.completed":
            self._allowed.pop(str(d.get("session_id")), None)

    def _allocation(self, d: dict[str, Any]) -> None:
        """``site.allocation``: the power each running session may draw (the wait
        estimates count it, as the core's do; docs/energy.md)."""
        listed = {str(e.get("session_id")) for e in d.get("sessions") or ()}
        for gone in self._site_sessions.get(str(d.get("site")), set()) - listed:
            self._allowed.pop(gone, None)  # ended, never started, or left the site
        self._site_sessions[str(d.get("site"))] = listed
        for entry in d.get("sessions") or ():
            sid, kw = str(entry.get("session_id")), _number(entry.get("kw"))
            self._allowed[sid] = kw  # a start's allocation comes before charging.started
            p = self.reads.points.get(str(entry.get("point_id", "")))
            s = p.session if p is not None else None
            if s is not None and s.id == sid:
                s.allowed_kw = kw

    def _tariff_updated(self, d: dict[str, Any]) -> None:
        """``tariff.updated``: the core's book changes the same way (a tariff set
        before any snapshot carried tariffs is read in this machine's zone, as a
        core without ``--timezone`` reads it)."""
        book = self.reads.tariffs
        if book is None:
            book = self.reads.tariffs = TariffBook(site_zone(None))
        action, tariff_id = d["action"], str(d["tariff_id"])
        if action == "set":
            try:
                book.put(tariff_from_builtins(d["tariff"]))
            except TariffInvalid as exc:
                raise ValueError(str(exc)) from None
        elif action == "assign":
            book.assign(str(d["points"]), tariff_id)
        elif action == "remove":
            book.remove(tariff_id)

    def _reservation_from_view(self, v: dict[str, Any]) -> Reservation:
        self._order += 1
        expira = v.get("expira_em")
        return Reservation(
            id=str(v["reservation_id"]),
            vehicle_id=str(v["vehicle_id"]),
            point_id=str(v["id_ponto_recarga"]),
            created_at=parse_timestamp(v["criada_em"]),
            eta_s=float(v["tempo_estimado"]) * 60.0,
            order=self._order,
            deadline=parse_timestamp(expira) if expira else None,
        )


def _number(value: Any) -> float:
    """A figure as the core holds it (an int stays an int: its JSON is the core's)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number: {value!r}")
    return value


def _drop(p: PointState, reservation_id: str) -> None:
    p.queue[:] = [r for r in p.queue if r.id != reservation_id]


def _point_from_view(v: dict[str, Any]) -> PointState:
    out = v.get("fora_de_servico") is True
    estado = v["estado"]
    return PointState(
        id=str(v["id"]),
        latitude=_number(v["latitude"]),
        longitude=_number(v["longitude"]),
        potencia_kw=_number(v["potencia_kw"]),
        preco_kwh=_number(v["preco_kwh"]),
        online=v.get("online") is True,
        usable=estado not in _UNUSABLE,
        out_of_service=out,
        oos_reason=str(v.get("reason") or "") if out else "",
        estado=estado,
    )


def _session_from_view(v: dict[str, Any]) -> Session:
    return Session(
        id=str(v["session_id"]),
        vehicle_id=str(v["vehicle_id"]),
        point_id=str(v["id_ponto_recarga"]),
        started_at=parse_timestamp(v["inicio"]),
        nivel_inicial=float(v["nivel_inicial"]),
        nivel_carregar=float(v["nivel_carregar"]),
        capacidade_kwh=float(v["capacidade_kwh"]),
        payment_method=str(v["payment_method"]),
        price_kwh=to_decimal(float(v["preco_kwh"])),
        reservation_id=None,
        boot_id=None,
        energy_reported=float(v.get("energia_kwh") or 0.0),
        allowed_kw=None if v.get("potencia_kw") is None else float(v["potencia_kw"]),
    )
