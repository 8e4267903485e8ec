"""Points as OCPI Locations/EVSEs/Connectors, and sessions/CDRs of roaming drivers (pure).

Theory of operation
-------------------
The broker knows *points*; OCPI knows Locations holding EVSEs holding
Connectors. docs/ocpi.md fixes the mapping: a point is one EVSE (``uid`` =
the point id) with one Connector ``"1"``; points whose ids share a prefix
before their last ``-`` (``FSA-01``, ``FSA-02``) are EVSEs of one Location
``FSA``; any other point is a Location of its own, with the point's id.

:class:`LocationsView` keeps the points with the web console's own projection
(:class:`broker.consumers.web.state.ConsoleState`: snapshot, then every bus event in
seq order) and, per EVSE, the OCPI object and its ``last_updated`` (the bus
time of the event that last changed what OCPI shows). :meth:`apply` returns
the :class:`Change` each event makes, which the server turns into pushes.

No clock, socket or database here: times come in as arguments.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, Literal

import msgspec

from broker.consumers.ocpi.models import (
    CDR,
    EVSE,
    BusinessDetails,
    CdrDimension,
    CdrLocation,
    CdrToken,
    ChargingPeriod,
    Connector,
    EvseStatus,
    GeoLocation,
    Location,
    Price,
    Session,
)
from broker.consumers.ocpi.wire import evse_id, ocpi_id
from broker.consumers.web.state import ConsoleState, Point, Running
from common.messages import BusEvent
from common.timeutil import format_timestamp, parse_timestamp

CONNECTOR_ID: Final = "1"
DC_ABOVE_KW: Final = 22.0  # above this a point is listed as a DC charger
CAPABILITIES: Final = ["REMOTE_START_STOP_CAPABLE", "RESERVABLE"]
CENT: Final = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Site:
    """What OCPI needs about this CPO that the broker does not know (``ev-broker ocpi`` options)."""

    country_code: str = "BR"
    party_id: str = "EVC"
    country: str = "BRA"  # ISO 3166-1 alpha-3 of the Locations
    city: str = "-"
    time_zone: str = "UTC"
    operator: str = "evcharge"
    currency: str = "BRL"


def location_id_of(point_id: str) -> str:
    """``FSA-01`` -> ``FSA``; an id without ``-`` (or ending in one) is its own Location."""
    head, sep, tail = point_id.rpartition("-")
    return ocpi_id(head if sep and head and tail else point_id)


def status_of(p: Point) -> EvseStatus:
    """The broker's ``estado`` as OCPI's EVSE status."""
    if p.out_of_service:
        return "INOPERATIVE"
    match p.estado:
        case "disponivel":
            return "AVAILABLE"
        case "reservado":
            return "RESERVED"
        case "carregando":
            return "CHARGING"
        case "indisponivel":
            return "OUTOFORDER"
        case _:
            return "UNKNOWN"


def geo(lat: float, lon: float) -> GeoLocation:
    """OCPI wants 5 to 7 decimals, as text."""
    return GeoLocation(latitude=f"{lat:.6f}", longitude=f"{lon:.6f}")


def tariff_id_for_price(price_kwh: float | None) -> str:
    """Id of the tariff of a point priced by its own ``preco_kwh`` (tariffs.md)."""
    return f"KWH-{Decimal(str(price_kwh or 0)).quantize(Decimal('0.0001')).normalize():f}"


def _power(p: Point) -> tuple[str, str, Literal["SOCKET", "CABLE"], int, int, int]:
    """(standard, power_type, format, volts, amperes, watts) from the point's power."""
    kw = p.potencia_kw or 0.0
    watts = round(kw * 1000)
    if kw > DC_ABOVE_KW:
        return "IEC_62196_T2_COMBO", "DC", "CABLE", 400, max(1, round(watts / 400)), watts
    return "IEC_62196_T2", "AC_3_PHASE", "SOCKET", 230, max(1, round(watts / 690)), watts


def evse_of(p: Point, site: Site, last_updated: float, tariff_id: str | None = None) -> EVSE:
    standard, power_type, fmt, volts, amps, watts = _power(p)
    stamp = format_timestamp(last_updated)
    return EVSE(
        uid=ocpi_id(p.id),
        evse_id=evse_id(site.country_code, site.party_id, p.id),
        status=status_of(p),
        capabilities=list(CAPABILITIES),
        coordinates=geo(p.latitude, p.longitude),
        physical_reference=p.id[:16],
        connectors=[
            Connector(
                id=CONNECTOR_ID,
                standard=standard,
                format=fmt,
                power_type=power_type,
                max_voltage=volts,
                max_amperage=amps,
                max_electric_power=watts or None,
                tariff_ids=[tariff_id or tariff_id_for_price(p.preco_kwh)],
                last_updated=stamp,
            )
        ],
        last_updated=stamp,
    )


@dataclass(frozen=True, slots=True)
class Change:
    """What one event changed: ``new`` EVSE, its ``status`` only, or its ``static`` facts."""

    location_id: str
    evse_uid: str
    point_id: str
    kind: Literal["new", "status", "static"]
    new_location: bool


class LocationsView:
    """The points as OCPI Locations, kept current event by event."""

    def __init__(self, site: Site) -> None:
        self.site = site
        #: (point id, preco_kwh, now) -> the id of the tariff pricing that point
        self.tariff_of: Callable[[str, float | None, float], str] = _by_price
        self.state = ConsoleState()
        self.evses: dict[str, EVSE] = {}  # point id -> EVSE
        self.updated: dict[str, float] = {}  # point id -> last_updated
        self.members: dict[str, list[str]] = {}  # location id -> point ids (sorted)
        self.order: list[str] = []  # location ids, sorted
        self.uid_to_point: dict[str, str] = {}

    # --- input ----------------------------------------------------------------------

    def load_snapshot(self, snap: Mapping[str, Any], now: float) -> None:
        self.state.load_snapshot(snap, now)
        self.evses.clear()
        self.updated.clear()
        self.members.clear()
        self.order.clear()
        self.uid_to_point.clear()
        for p in self.state.points.values():
            self._put(p, p.last_heard or now)

    def apply(self, ev: BusEvent) -> Change | None:
        if self.state.apply(ev) is None:
            return None
        pid = ev.data.get("point_id") or ev.data.get("id_ponto_recarga") or ev.data.get("id")
        p = self.state.points.get(str(pid))
        if p is None:
            return None
        old = self.evses.get(p.id)
        fresh = self._evse(p, ev.ts)
        if old is None:
            new_location = location_id_of(p.id) not in self.members
            self._put(p, ev.ts, fresh)
            return Change(location_id_of(p.id), fresh.uid, p.id, "new", new_location)
        if _same(old, fresh):
            return None
        self._put(p, ev.ts, fresh)
        kind: Literal["status", "static"] = (
            "status" if _same(old, fresh, but_status=True) else "static"
        )
        return Change(location_id_of(p.id), fresh.uid, p.id, kind, False)

    def _evse(self, p: Point, when: float) -> EVSE:
        return evse_of(p, self.site, when, self.tariff_of(p.id, p.preco_kwh, when))

    def retariff(self, when: float) -> list[Change]:
        """After a tariff change: every EVSE whose tariff changed, as a static change."""
        out = []
        for pid, old in list(self.evses.items()):
            p = self.state.points[pid]
            fresh = self._evse(p, when)
            if not _same(old, fresh):
                self._put(p, when, fresh)
                out.append(Change(location_id_of(pid), fresh.uid, pid, "static", False))
        return out

    def _put(self, p: Point, when: float, evse: EVSE | None = None) -> None:
        self.evses[p.id] = evse or self._evse(p, when)
        self.updated[p.id] = when
        self.uid_to_point[self.evses[p.id].uid] = p.id
        lid = location_id_of(p.id)
        members = self.members.get(lid)
        if members is None:
            self.members[lid] = [p.id]
            bisect.insort(self.order, lid)
        elif p.id not in members:
            bisect.insort(members, p.id)

    # --- views ----------------------------------------------------------------------

    def location_updated(self, lid: str) -> float:
        return max(self.updated[pid] for pid in self.members[lid])

    def location(self, lid: str) -> Location | None:
        members = self.members.get(lid)
        if not members:
            return None
        first = self.state.points[members[0]]
        n = len(members)
        lat = sum(self.state.points[m].latitude for m in members) / n
        lon = sum(self.state.points[m].longitude for m in members) / n
        return Location(
            country_code=self.site.country_code,
            party_id=self.site.party_id,
            id=lid,
            publish=True,
            name=lid if n > 1 else first.id,
            address=f"{lat:.6f}, {lon:.6f}",
            city=self.site.city,
            country=self.site.country,
            coordinates=geo(lat, lon),
            time_zone=self.site.time_zone,
            operator=BusinessDetails(name=self.site.operator),
            evses=[self.evses[m] for m in members],
            last_updated=format_timestamp(self.location_updated(lid)),
        )

    def evse(self, lid: str, uid: str) -> EVSE | None:
        pid = self.uid_to_point.get(uid)
        if pid is None or location_id_of(pid) != lid:
            return None
        return self.evses.get(pid)

    def point_of(self, lid: str, uid: str | None) -> Point | None:
        """The point of an EVSE; when ``uid`` is None, the Location's only EVSE, or
        its first AVAILABLE one (None when it has several and none is available)."""
        members = self.members.get(lid)
        if not members:
            return None
        if uid is None:
            if len(members) == 1:
                return self.state.points[members[0]]
            free = (m for m in members if self.evses[m].status == "AVAILABLE")
            first = next(free, None)
            return None if first is None else self.state.points[first]
        pid = self.uid_to_point.get(uid)
        return self.state.points.get(pid) if pid in members else None

    def sessions_running(self) -> list[Running]:
        return sorted(self.state.running.values(), key=lambda r: r.started_at)


def _by_price(point_id: str, price_kwh: float | None, now: float) -> str:
    return tariff_id_for_price(price_kwh)


def _same(a: EVSE, b: EVSE, *, but_status: bool = False) -> bool:
    ca, cb = a.connectors[0], b.connectors[0]
    static = (
        a.coordinates == b.coordinates
        and ca.max_electric_power == cb.max_electric_power
        and ca.tariff_ids == cb.tariff_ids
    )
    return static if but_status else static and a.status == b.status


# --- sessions and CDRs ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Driver:
    """A roaming driver: the eMSP's token, as the broker's vehicle ``vehicle_id``."""

    vehicle_id: str
    partner: str
    country_code: str
    party_id: str
    uid: str
    type: str
    contract_id: str
    auth_method: str = "COMMAND"
    authorization_reference: str | None = None

    def cdr_token(self) -> CdrToken:
        return CdrToken(
            country_code=self.country_code,
            party_id=self.party_id,
            uid=self.uid,
            # (ignored below) the token type is validated on decode; the struct field is a Literal
            type=self.type,  # type: ignore[arg-type]
            contract_id=self.contract_id,
        )


def _money(value: Any) -> float:
    return float(Decimal(str(value or 0)).quantize(CENT, rounding=ROUND_HALF_UP))


def session_of(
    site: Site, d: Driver, data: Mapping[str, Any], *, now: float, completed: bool = False
) -> Session:
    """The OCPI Session of a ``charging.started`` (or, ``completed``, ``charging.completed``)."""
    pid = str(data.get("point_id"))
    started = _epoch(data.get("started_at"), now)
    kwh = float(data.get("energy_kwh") or 0.0)
    return Session(
        country_code=site.country_code,
        party_id=site.party_id,
        id=ocpi_id(str(data.get("session_id"))),
        start_date_time=format_timestamp(started),
        end_date_time=format_timestamp(_epoch(data.get("ended_at"), now)) if completed else None,
        kwh=round(kwh, 3),
        cdr_token=d.cdr_token(),
        # (ignored below) the auth method is one of the OCPI literals (set by the mapping)
        auth_method=d.auth_method,  # type: ignore[arg-type]
        authorization_reference=d.authorization_reference,
        location_id=location_id_of(pid),
        evse_uid=ocpi_id(pid),
        connector_id=CONNECTOR_ID,
        currency=str(data.get("currency") or site.currency),
        status="COMPLETED" if completed else "ACTIVE",
        total_cost=Price(excl_vat=_money(data.get("cost")), incl_vat=_money(data.get("cost")))
        if completed
        else None,
        last_updated=format_timestamp(now),
    )


def cdr_of(
    site: Site, d: Driver, data: Mapping[str, Any], point: Point | None, *, now: float
) -> CDR:
    """The CDR of a roaming driver's ``charging.completed``.

    When the event carries the tariff engine's ``cdr`` its totals and periods are
    used as they are; otherwise the session is one ENERGY period priced at the
    point's ``preco_kwh`` (the broker's bill, which is what the driver is charged).
    """
    pid = str(data.get("point_id"))
    started = _epoch(data.get("started_at"), now)
    ended = _epoch(data.get("ended_at"), now)
    kwh = float(data.get("energy_kwh") or 0.0)
    cost = _money(data.get("cost"))
    hours = round(max(0.0, ended - started) / 3600, 4)
    engine = data.get("cdr") if isinstance(data.get("cdr"), Mapping) else None
    p = point or Point(pid)
    standard, power_type, fmt, *_ = _power(p)
    location = CdrLocation(
        id=location_id_of(pid),
        name=pid,
        address=f"{p.latitude:.6f}, {p.longitude:.6f}",
        city=site.city,
        country=site.country,
        coordinates=geo(p.latitude, p.longitude),
        evse_uid=ocpi_id(pid),
        evse_id=evse_id(site.country_code, site.party_id, pid),
        connector_id=CONNECTOR_ID,
        connector_standard=standard,
        connector_format=fmt,
        connector_power_type=power_type,
    )
    tariff = tariff_id_for_price(float(data.get("price_kwh") or 0.0))
    periods = [
        ChargingPeriod(
            start_date_time=format_timestamp(started),
            dimensions=[
                CdrDimension(type="ENERGY", volume=round(kwh, 3)),
                CdrDimension(type="TIME", volume=hours),
            ],
            tariff_id=tariff,
        )
    ]
    out = CDR(
        country_code=site.country_code,
        party_id=site.party_id,
        id=ocpi_id(str(data.get("session_id")), 39),
        start_date_time=format_timestamp(started),
        end_date_time=format_timestamp(ended),
        session_id=ocpi_id(str(data.get("session_id"))),
        cdr_token=d.cdr_token(),
        # (ignored below) the auth method is one of the OCPI literals (set by the mapping)
        auth_method=d.auth_method,  # type: ignore[arg-type]
        authorization_reference=d.authorization_reference,
        cdr_location=location,
        currency=str(data.get("currency") or site.currency),
        charging_periods=periods,
        total_cost=Price(excl_vat=cost, incl_vat=cost),
        total_energy=round(kwh, 3),
        total_energy_cost=Price(excl_vat=cost, incl_vat=cost),
        total_time=hours,
        last_updated=format_timestamp(now),
    )
    return _with_engine_cdr(out, engine) if engine is not None else out


def _with_engine_cdr(out: CDR, cdr: Mapping[str, Any]) -> CDR:
    """Take the tariff engine's CDR fields (OCPI names already) over the fallback's."""
    fields: dict[str, Any] = msgspec.to_builtins(out)
    for name in (
        "start_date_time",
        "end_date_time",
        "currency",
        "charging_periods",
        "total_cost",
        "total_energy",
        "total_energy_cost",
        "total_fixed_cost",
        "total_time",
        "total_time_cost",
        "total_parking_time",
        "total_parking_cost",
    ):
        if cdr.get(name) is not None:
            fields[name] = cdr[name]
    return msgspec.convert(fields, CDR)


def _epoch(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return parse_timestamp(value)
        except ValueError:
            return default
    return default
