"""Pricing a session under an OCPI 2.2.1 tariff: charging periods in, a CDR out.

Theory of operation. A session is told as a list of :class:`Usage` stretches
(start, end, energy, charging or parked, power) measured on the broker's
clock. :func:`price_session` cuts them into pieces at every instant where a
restriction could change its verdict (local time of day and midnight in the
site's zone, session duration thresholds, kWh thresholds interpolated inside
a stretch); in each piece, for each dimension, the first element whose
restrictions hold at the piece's start is the one in force (OCPI: element
order decides). Pieces with the same components in force are merged back, so
the CDR's charging periods split exactly where the element in force (or the
power) changes, and splitting the input anywhere changes nothing.

Amounts are exact decimals (60 digits) until the end: ``step_size`` is taken
once per session for ENERGY and once for TIME and PARKING_TIME together, with
the step of the last period that priced the dimension and the extra volume
billed at that period's price (OCPI CDRs module); FLAT is billed once;
``min_price`` / ``max_price`` bound the totals excl. and incl. VAT apart.
Only then is each total rounded half-up to cents; volumes keep 4 decimals
(OCPI ``number``). No I/O: the time zone is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from decimal import ROUND_CEILING, ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any, Final, Literal

import msgspec

from common.tariffs import (
    DAYS,
    PriceComponent,
    Tariff,
    TariffRestrictions,
    format_datetime,
    parse_datetime,
)

CENT: Final = Decimal("0.01")
VOLUME: Final = Decimal("0.0001")
HOUR: Final = Decimal(3600)
EXACT: Final = Context(prec=60)
ZERO: Final = Decimal(0)
ONE: Final = Decimal(1)
HUNDRED: Final = Decimal(100)

CdrDimensionType = Literal["ENERGY", "TIME", "PARKING_TIME", "MAX_POWER", "MIN_POWER"]


def dec(value: float | int | Decimal) -> Decimal:
    """Exact decimal of an instant or amount as a human reads it (``repr``)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    return Decimal(repr(float(value)))


@dataclass(frozen=True, slots=True)
class Usage:
    """One measured stretch of a session: charging (energy flows) or parked."""

    start: float
    end: float
    energy_kwh: Decimal = ZERO
    charging: bool = True
    power_kw: Decimal | None = None
    current_a: Decimal | None = None


# --- the CDR, in OCPI 2.2.1 shape ---------------------------------------------------


class CdrPrice(msgspec.Struct):
    excl_vat: Decimal
    incl_vat: Decimal


class CdrDimension(msgspec.Struct):
    type: CdrDimensionType
    volume: Decimal


class ChargingPeriod(msgspec.Struct, omit_defaults=True):
    start_date_time: str
    dimensions: list[CdrDimension]
    tariff_id: str | None = None


class CdrToken(msgspec.Struct):
    uid: str
    contract_id: str
    country_code: str = "BR"
    party_id: str = "EVB"
    type: str = "APP_USER"


class Cdr(msgspec.Struct, omit_defaults=True):
    """OCPI 2.2.1 CDR fields the broker knows (the contract's ``cdr``), plus
    ``tariff_id`` (the tariff the session started with)."""

    id: str
    start_date_time: str
    end_date_time: str
    currency: str
    charging_periods: list[ChargingPeriod]
    total_cost: CdrPrice
    total_fixed_cost: CdrPrice
    total_energy: Decimal
    total_energy_cost: CdrPrice
    total_time: Decimal
    total_time_cost: CdrPrice
    total_parking_time: Decimal
    total_parking_cost: CdrPrice
    last_updated: str
    tariff_id: str | None = None
    country_code: str = "BR"
    party_id: str = "EVB"
    session_id: str | None = None
    cdr_token: CdrToken | None = None
    auth_method: str = "AUTH_REQUEST"
    remark: str | None = None


CDR_ENCODER: Final = msgspec.json.Encoder(decimal_format="number")


def cdr_to_builtins(c: Cdr) -> dict[str, object]:
    out: dict[str, object] = msgspec.json.decode(CDR_ENCODER.encode(c))
    return out


TOTALS: Final = (
    "tariff_id",
    "currency",
    "total_energy",
    "total_time",
    "total_parking_time",
    "total_fixed_cost",
    "total_energy_cost",
    "total_time_cost",
    "total_parking_cost",
    "total_cost",
)


def cdr_totals(cdr: dict[str, Any]) -> dict[str, Any]:
    """The totals of a CDR (what ``custos`` lists per session)."""
    return {k: cdr[k] for k in TOTALS if k in cdr}


def cdr_from_builtins(value: object) -> Cdr:
    return msgspec.convert(value, Cdr, strict=False)


# --- exact sums of one session ---------------------------------------------------------


@dataclass(slots=True)
class Money:
    excl: Decimal = ZERO
    incl: Decimal = ZERO

    def add(self, volume: Decimal, c: PriceComponent) -> None:
        ctx = EXACT
        cost = ctx.multiply(volume, c.price)
        self.excl = ctx.add(self.excl, cost)
        vat = c.vat
        if vat is not None:
            cost = ctx.multiply(cost, _vat_factor(vat))
        self.incl = ctx.add(self.incl, cost)

    def price(self) -> CdrPrice:
        return CdrPrice(excl_vat=cents(self.excl), incl_vat=cents(self.incl))

    def price_builtins(self) -> dict[str, Any]:
        """``price()`` as plain JSON types (what a CDR's JSON decodes to)."""
        return {"excl_vat": _number(cents(self.excl)), "incl_vat": _number(cents(self.incl))}


def _number(d: Decimal) -> float:
    """A rounded amount or volume as its JSON number decodes. :func:`cents` and
    :func:`volume` always leave 2 or 4 decimals, so the number is written with a
    point and decodes to a float; ``float`` of a Decimal is correctly rounded from
    its text, as JSON decoding is."""
    return float(d)


_VAT: dict[Decimal, Decimal] = {}


def _vat_factor(vat: Decimal) -> Decimal:
    """``1 + vat / 100`` (exact; a few VAT rates exist, so they are kept)."""
    f = _VAT.get(vat)
    if f is None:
        if len(_VAT) > 1000:
            _VAT.clear()
        f = _VAT[vat] = EXACT.add(ONE, EXACT.divide(vat, HUNDRED))
    return f


FINE: Final = Decimal("1e-20")


def cents(x: Decimal) -> Decimal:
    """Half-up to cents, after dropping the noise of 60-digit interpolation."""
    return x.quantize(FINE, context=EXACT).quantize(CENT, ROUND_HALF_UP, EXACT)


def volume(x: Decimal) -> Decimal:
    return x.quantize(VOLUME, rounding=ROUND_HALF_UP)


@dataclass(slots=True)
class Bill:
    """The exact and rounded outcome of :func:`price_session`."""

    energy: Money = field(default_factory=Money)
    time: Money = field(default_factory=Money)
    parking: Money = field(default_factory=Money)
    fixed: Money = field(default_factory=Money)
    total: Money = field(default_factory=Money)
    total_energy: Decimal = ZERO
    total_seconds: Decimal = ZERO
    parking_seconds: Decimal = ZERO
    periods: list[tuple[Decimal, bool, Decimal, Decimal, Decimal | None, bool]] = field(
        default_factory=list
    )

    @property
    def cost(self) -> Decimal:
        """Total incl. VAT rounded to cents: the ``cost`` every bill carries."""
        return cents(self.total.incl)

    def cdr_builtins(
        self,
        *,
        cdr_id: str,
        tariff: Tariff,
        start: float,
        end: float,
        now: float,
        session_id: str | None = None,
        token: str | None = None,
        remark: str | None = None,
    ) -> dict[str, Any]:
        """``cdr_to_builtins(self.cdr(...))`` built directly (the same dict, key for
        key and type for type, at a third of the cost): what the core publishes."""
        tid = tariff.id
        periods: list[dict[str, Any]] = []
        for t0, charging, energy, seconds, power, priced in self.periods:
            if charging:
                dims = [
                    {"type": "ENERGY", "volume": _number(volume(energy))},
                    {"type": "TIME", "volume": _number(volume(seconds / HOUR))},
                ]
                if power is not None:
                    dims.append({"type": "MAX_POWER", "volume": _number(volume(power))})
            else:
                dims = [{"type": "PARKING_TIME", "volume": _number(volume(seconds / HOUR))}]
            period: dict[str, Any] = {"start_date_time": format_datetime(float(t0))}
            period["dimensions"] = dims
            if priced:
                period["tariff_id"] = tid
            periods.append(period)
        end_text = format_datetime(end)
        out: dict[str, Any] = {
            "id": cdr_id,
            "start_date_time": format_datetime(start),
            "end_date_time": end_text,
            "currency": tariff.currency,
            "charging_periods": periods,
            "total_cost": self.total.price_builtins(),
            "total_fixed_cost": self.fixed.price_builtins(),
            "total_energy": _number(volume(self.total_energy)),
            "total_energy_cost": self.energy.price_builtins(),
            "total_time": _number(volume(self.total_seconds / HOUR)),
            "total_time_cost": self.time.price_builtins(),
            "total_parking_time": _number(volume(self.parking_seconds / HOUR)),
            "total_parking_cost": self.parking.price_builtins(),
            "last_updated": end_text if now == end else format_datetime(now),
        }
        if tid is not None:
            out["tariff_id"] = tid
        if tariff.country_code != "BR":
            out["country_code"] = tariff.country_code
        if tariff.party_id != "EVB":
            out["party_id"] = tariff.party_id
        if session_id is not None:
            out["session_id"] = session_id
        if token is not None:
            out["cdr_token"] = {
                "uid": token,
                "contract_id": token,
                "country_code": "BR",
                "party_id": "EVB",
                "type": "APP_USER",
            }
        if remark is not None:
            out["remark"] = remark
        return out

    def cdr(
        self,
        *,
        cdr_id: str,
        tariff: Tariff,
        start: float,
        end: float,
        now: float,
        session_id: str | None = None,
        token: str | None = None,
        remark: str | None = None,
    ) -> Cdr:
        periods = []
        for t0, charging, energy, seconds, power, priced in self.periods:
            dims = []
            if charging:
                dims.append(CdrDimension("ENERGY", volume(energy)))
                dims.append(CdrDimension("TIME", volume(seconds / HOUR)))
                if power is not None:
                    dims.append(CdrDimension("MAX_POWER", volume(power)))
            else:
                dims.append(CdrDimension("PARKING_TIME", volume(seconds / HOUR)))
            periods.append(
                ChargingPeriod(
                    start_date_time=format_datetime(float(t0)),
                    dimensions=dims,
                    tariff_id=tariff.id if priced else None,
                )
            )
        return Cdr(
            id=cdr_id,
            start_date_time=format_datetime(start),
            end_date_time=format_datetime(end),
            currency=tariff.currency,
            charging_periods=periods,
            total_cost=self.total.price(),
            total_fixed_cost=self.fixed.price(),
            total_energy=volume(self.total_energy),
            total_energy_cost=self.energy.price(),
            total_time=volume(self.total_seconds / HOUR),
            total_time_cost=self.time.price(),
            total_parking_time=volume(self.parking_seconds / HOUR),
            total_parking_cost=self.parking.price(),
            last_updated=format_datetime(now),
            tariff_id=tariff.id,
            country_code=tariff.country_code,
            party_id=tariff.party_id,
            session_id=session_id,
            cdr_token=None if token is None else CdrToken(uid=token, contract_id=token),
            remark=remark,
        )


# --- restrictions ---------------------------------------------------------------------


_NO_CLOCK: Final = datetime(2000, 1, 1)  # a tariff with no clock restriction never reads it


def _seconds_of_day(text: str) -> int:
    return int(text[:2]) * 3600 + int(text[3:]) * 60


@dataclass(frozen=True, slots=True)
class _Moment:
    """What the restrictions look at when a piece starts."""

    local: datetime
    kwh: Decimal
    duration: Decimal
    power: Decimal | None
    current: Decimal | None


def holds(r: TariffRestrictions | None, m: _Moment) -> bool:
    """True when every restriction that is set holds at ``m``."""
    if r is None:
        return True
    if r.reservation is not None:
        return False  # describes reservation costs; sessions never pay them
    if r.start_time is not None or r.end_time is not None:
        s = m.local.hour * 3600 + m.local.minute * 60 + m.local.second
        st = _seconds_of_day(r.start_time) if r.start_time is not None else 0
        et = _seconds_of_day(r.end_time) if r.end_time is not None else 0
        if et == 0 or st == et:
            if s < st:
                return False
        elif st < et:
            if not st <= s < et:
                return False
        elif et <= s < st:
            return False
    if r.start_date is not None or r.end_date is not None:
        d = m.local.date().isoformat()
        if r.start_date is not None and d < r.start_date:
            return False
        if r.end_date is not None and d >= r.end_date:
            return False
    if r.day_of_week is not None and DAYS[m.local.weekday()] not in r.day_of_week:
        return False
    if r.min_kwh is not None and m.kwh < r.min_kwh:
        return False
    if r.max_kwh is not None and m.kwh >= r.max_kwh:
        return False
    if r.min_duration is not None and m.duration < r.min_duration:
        return False
    if r.max_duration is not None and m.duration >= r.max_duration:
        return False
    if r.min_power is not None or r.max_power is not None:
        if m.power is None:
            return False
        if r.min_power is not None and m.power < r.min_power:
            return False
        if r.max_power is not None and m.power >= r.max_power:
            return False
    if r.min_current is not None or r.max_current is not None:
        if m.current is None:
            return False
        if r.min_current is not None and m.current < r.min_current:
            return False
        if r.max_current is not None and m.current >= r.max_current:
            return False
    return True


class CompiledTariff:
    """A tariff prepared for pricing: its cut points and elements per dimension."""

    __slots__ = (
        "_by_dim",
        "_days",
        "_durations",
        "_first",
        "_kwhs",
        "_midnight",
        "_times",
        "clock",
        "cutless",
        "estimates",
        "tariff",
        "tz",
        "valid_from",
        "valid_to",
        "views",
    )

    def __init__(self, tariff: Tariff, tz: tzinfo) -> None:
        self.tariff = tariff
        self.tz = tz
        start, end = tariff.start_date_time, tariff.end_date_time
        self.valid_from = -math.inf if start is None else parse_datetime(start)
        self.valid_to = math.inf if end is None else parse_datetime(end)
        #: power -> (computed at, valid until, the driver's view): see TariffBook.view
        self.views: dict[float, tuple[float, float, object]] = {}
        #: (power, kWh, start minute) -> estimated cost (bounded)
        self.estimates: dict[tuple[float, float, int], float] = {}
        self._days: dict[int, tuple[Decimal, ...]] = {}
        times: set[int] = set()
        durations: set[int] = set()
        kwhs: set[Decimal] = set()
        midnight = False
        for e in tariff.elements:
            r = e.restrictions
            if r is None:
                continue
            for t in (r.start_time, r.end_time):
                if t is not None:
                    times.add(_seconds_of_day(t))
            if r.start_date is not None or r.end_date is not None or r.day_of_week is not None:
                midnight = True
            for d in (r.min_duration, r.max_duration):
                if d is not None:
                    durations.add(d)
            for k in (r.min_kwh, r.max_kwh):
                if k is not None:
                    kwhs.add(k)
        if midnight:
            times.add(0)
        #: some restriction reads the local clock (time of day, date, weekday)
        self.clock = bool(times) or midnight
        self._times = sorted(times)
        self._midnight = midnight
        self._durations = sorted(durations)
        self._kwhs = sorted(kwhs)
        self._by_dim: dict[str, list[tuple[TariffRestrictions | None, PriceComponent]]] = {}
        for e in tariff.elements:
            seen: set[str] = set()
            for c in e.price_components:
                if c.type not in seen:  # one component per dimension in an element
                    seen.add(c.type)
                    self._by_dim.setdefault(c.type, []).append((e.restrictions, c))
        #: fast path: nothing can change inside a stretch (no time of day, date,
        #: weekday, duration or kWh restriction), so a stretch is one piece
        self.cutless = not (self.clock or self._durations or self._kwhs)
        #: fast path: a dimension whose first element is unrestricted is always priced
        #: by it (the first element that holds is the one in force)
        self._first: dict[str, PriceComponent | None] = {
            dim: entries[0][1] if entries[0][0] is None else None
            for dim, entries in self._by_dim.items()
        }

    def in_force(self, dim: str, m: _Moment) -> PriceComponent | None:
        for r, c in self._by_dim.get(dim, ()):
            if holds(r, m):
                return c
        return None

    def in_force_fast(self, dim: str, m: _Moment) -> PriceComponent | None:
        """:meth:`in_force`, without looking at ``m`` when the answer cannot depend
        on it (no element prices ``dim``, or its first element is unrestricted)."""
        entries = self._by_dim.get(dim)
        if entries is None:
            return None
        first = self._first[dim]
        if first is not None:
            return first
        for r, c in entries:
            if holds(r, m):
                return c
        return None

    def time_cuts(self, a: Decimal, b: Decimal) -> list[Decimal]:
        """Local time-of-day instants strictly inside ``(a, b)``."""
        if not self._times:
            return []
        out: list[Decimal] = []
        first = datetime.fromtimestamp(float(a), self.tz).date().toordinal() - 1
        last = datetime.fromtimestamp(float(b), self.tz).date().toordinal() + 1
        for day in range(first, last + 1):
            for t in self._day_cuts(day):
                if a < t < b:
                    out.append(t)
        return out

    def _day_cuts(self, ordinal: int) -> tuple[Decimal, ...]:
        """The epoch instants of the tariff's times of day on one local day (cached)."""
        cuts = self._days.get(ordinal)
        if cuts is None:
            d = date.fromordinal(ordinal)
            cuts = tuple(
                Decimal(
                    int(
                        datetime(
                            d.year, d.month, d.day, s // 3600, s % 3600 // 60, tzinfo=self.tz
                        ).timestamp()
                    )
                )
                for s in self._times
            )
            if len(self._days) > 4096:
                self._days.clear()
            self._days[ordinal] = cuts
        return cuts


def _cuts(
    ct: CompiledTariff, u: Usage, a: Decimal, b: Decimal, t0: Decimal, kwh0: Decimal
) -> list[tuple[Decimal, Decimal]]:
    """Instants inside ``(a, b)`` where a restriction may change, each with the
    energy delivered in the stretch up to it (exact at a kWh threshold)."""
    e = u.energy_kwh if u.charging else ZERO
    times = set(ct.time_cuts(a, b))
    for d in ct._durations:
        t = t0 + d
        if a < t < b:
            times.add(t)
    if not times and (e <= 0 or not ct._kwhs):
        return []
    cuts: dict[Decimal, Decimal] = {}
    # the caller (price_compiled) already computes in the EXACT context
    for t in times:
        cuts[t] = e * (t - a) / (b - a) if e > 0 else ZERO
    if e > 0:
        for k in ct._kwhs:
            if kwh0 < k < kwh0 + e:
                cuts[a + (k - kwh0) / e * (b - a)] = k - kwh0
    return sorted(cuts.items())


def price_session(
    tariff: Tariff, usages: Sequence[Usage], session_start: float, tz: tzinfo
) -> Bill:
    """Price a session's stretches under ``tariff`` (exact until the final cents)."""
    return price_compiled(CompiledTariff(tariff, tz), usages, session_start)


def price_compiled(
    ct: CompiledTariff, usages: Iterable[Usage], session_start: float, *, fast: bool = True
) -> Bill:
    """Price ``usages`` under a prepared tariff. ``fast`` (the default) skips the
    cut search of a tariff with nothing to cut at (:attr:`CompiledTariff.cutless`)
    and the restriction checks of dimensions priced unconditionally; ``fast=False``
    is the general path (the same bill, which a property test checks)."""
    bill = Bill()
    in_force = ct.in_force_fast if fast else ct.in_force
    cutless, clock = fast and ct.cutless, ct.clock
    t0 = dec(session_start)
    kwh = ZERO
    flat_done = False
    last_energy: PriceComponent | None = None
    energy_billable = ZERO
    last_time: tuple[str, PriceComponent] | None = None
    time_billable = {"TIME": ZERO, "PARKING_TIME": ZERO}
    merged = bill.periods
    prev_key: tuple[object, ...] | None = None
    end = t0
    with localcontext(EXACT):
        for u in usages:
            a, b = dec(u.start), dec(u.end)
            if b < a:
                b = a
            end = max(end, b)
            bill.total_seconds += b - a
            if not u.charging:
                bill.parking_seconds += b - a
            bill.total_energy += u.energy_kwh
            last = (b, u.energy_kwh if u.charging else ZERO)
            edges = (
                [(a, ZERO), last] if cutless else [(a, ZERO), *_cuts(ct, u, a, b, t0, kwh), last]
            )
            for i in range(len(edges) - 1):
                (pa, ea), (pb, eb) = edges[i], edges[i + 1]
                secs = pb - pa
                energy = eb - ea
                m = _Moment(
                    local=datetime.fromtimestamp(float(pa), ct.tz) if clock else _NO_CLOCK,
                    kwh=kwh,
                    duration=pa - t0,
                    power=u.power_kw if u.charging else ZERO,
                    current=u.current_a if u.charging else ZERO,
                )
                flat = None if flat_done else in_force("FLAT", m)
                if flat is not None:
                    bill.fixed.add(ONE, flat)
                    flat_done = True
                priced = flat is not None
                ce: PriceComponent | None = None
                ctime: PriceComponent | None = None
                if u.charging:
                    ce = in_force("ENERGY", m)
                    if ce is not None:
                        bill.energy.add(energy, ce)
                        energy_billable += energy
                        if energy > 0:
                            last_energy = ce
                    ctime = in_force("TIME", m)
                    if ctime is not None:
                        bill.time.add(secs / HOUR, ctime)
                        time_billable["TIME"] += secs
                        if secs > 0:
                            last_time = ("TIME", ctime)
                else:
                    ctime = in_force("PARKING_TIME", m)
                    if ctime is not None:
                        bill.parking.add(secs / HOUR, ctime)
                        time_billable["PARKING_TIME"] += secs
                        if secs > 0:
                            last_time = ("PARKING_TIME", ctime)
                priced = priced or ce is not None or ctime is not None
                kwh += energy
                key = (u.charging, id(ce), id(ctime), u.power_kw, priced)
                _merge(merged, key == prev_key, pa, u, energy, secs, priced)
                prev_key = key
        _apply_steps(bill, last_energy, energy_billable, last_time, time_billable)
        _close(bill, ct.tariff)
    return bill


def _merge(
    merged: list[tuple[Decimal, bool, Decimal, Decimal, Decimal | None, bool]],
    same: bool,
    start: Decimal,
    u: Usage,
    energy: Decimal,
    secs: Decimal,
    priced: bool,
) -> None:
    """Add a piece to the CDR's periods: to the last one when the same components
    (and power) are in force, else as a new period."""
    if merged and same:
        s0, ch, e0, sec0, pw, pr = merged[-1]
        merged[-1] = (s0, ch, e0 + energy, sec0 + secs, pw, pr)
    else:
        merged.append((start, u.charging, energy, secs, u.power_kw if u.charging else None, priced))


def _apply_steps(
    bill: Bill,
    last_energy: PriceComponent | None,
    energy_billable: Decimal,
    last_time: tuple[str, PriceComponent] | None,
    time_billable: dict[str, Decimal],
) -> None:
    """Step sizes (OCPI): once for ENERGY, once for TIME and PARKING_TIME together, by the
    step of the last component of that dimension that billed something."""
    if last_energy is not None and last_energy.step_size > 0:
        wh = energy_billable * 1000
        step = Decimal(last_energy.step_size)
        extra = (wh / step).to_integral_value(ROUND_CEILING) * step - wh
        if extra > 0:
            bill.energy.add(extra / 1000, last_energy)
    if last_time is not None and last_time[1].step_size > 0:
        dim, comp = last_time
        secs = time_billable[dim]
        step = Decimal(comp.step_size)
        extra = (secs / step).to_integral_value(ROUND_CEILING) * step - secs
        if extra > 0:
            (bill.time if dim == "TIME" else bill.parking).add(extra / HOUR, comp)


def _close(bill: Bill, tariff: Tariff) -> None:
    """The total of the parts, bounded by the tariff's min/max price."""
    total = bill.total
    for part in (bill.fixed, bill.energy, bill.time, bill.parking):
        total.excl += part.excl
        total.incl += part.incl
    _bound(tariff, total)


def _bound(t: Tariff, total: Money) -> None:
    """``min_price`` / ``max_price``: excl. and incl. VAT each bounded (OCPI).

    A bound without ``incl_vat`` moves the total incl. VAT in proportion."""
    for bound, low in ((t.min_price, True), (t.max_price, False)):
        if bound is None:
            continue
        beyond = total.excl < bound.excl_vat if low else total.excl > bound.excl_vat
        if bound.incl_vat is None:
            if beyond:
                ratio = total.incl / total.excl if total.excl > 0 else ONE
                total.excl = bound.excl_vat
                total.incl = bound.excl_vat * ratio
            continue
        if beyond:
            total.excl = bound.excl_vat
        beyond_incl = total.incl < bound.incl_vat if low else total.incl > bound.incl_vat
        if beyond_incl:
            total.incl = bound.incl_vat


def coverage_gaps(t: Tariff) -> list[str]:
    """Dimensions the tariff leaves without a price at some moment of the week.

    Checked on the week's time-of-day / weekday grid for elements restricted by
    time of day and weekday only; elements with other restrictions (kWh, power,
    duration, dates) are taken as not covering, which is what a gap warning needs.
    """
    out: list[str] = []
    cuts = sorted(
        {0}
        | {
            _seconds_of_day(x)
            for e in t.elements
            if e.restrictions is not None
            for x in (e.restrictions.start_time, e.restrictions.end_time)
            if x is not None
        }
    )
    for dim in sorted({c.type for e in t.elements for c in e.price_components}):
        elems = [
            e.restrictions
            for e in t.elements
            if any(c.type == dim for c in e.price_components)
            and (e.restrictions is None or _only_clock(e.restrictions))
        ]
        gap = False
        for wd in range(7):
            for s in cuts:
                # 2024-01-01 is a Monday
                local = datetime(2024, 1, 1 + wd, s // 3600, s % 3600 // 60)
                m = _Moment(local=local, kwh=ZERO, duration=ZERO, power=None, current=None)
                if not any(holds(r, m) for r in elems):
                    gap = True
                    break
            if gap:
                break
        if gap:
            out.append(dim)
    return out


def _only_clock(r: TariffRestrictions) -> bool:
    clock = msgspec.structs.replace(r, start_time=None, end_time=None, day_of_week=None)
    return clock == TariffRestrictions()


# --- prices a driver sees -------------------------------------------------------------


def _incl(c: PriceComponent | None) -> Decimal:
    if c is None:
        return ZERO
    return c.price if c.vat is None else c.price * (ONE + c.vat / HUNDRED)


@dataclass(frozen=True, slots=True)
class PricesNow:
    """The prices in force at an instant, VAT included (per kWh, minute, session)."""

    energy_kwh: Decimal
    per_minute: Decimal
    parking_per_minute: Decimal
    flat: Decimal
    valid_until: float | None


def prices_at(ct: CompiledTariff, now: float, power_kw: float | None = None) -> PricesNow:
    """What a session starting at ``now`` pays at first, and when that next changes
    (the next time-of-day, midnight or ``end_date_time`` boundary; None: never)."""
    m = _Moment(
        local=datetime.fromtimestamp(now, ct.tz),
        kwh=ZERO,
        duration=ZERO,
        power=None if power_kw is None else dec(power_kw),
        current=None,
    )
    parked = _Moment(m.local, ZERO, ZERO, ZERO, ZERO)
    until: float | None = None
    a = dec(now)
    cuts = ct.time_cuts(a, a + 8 * 86400)
    if cuts:
        until = float(cuts[0])
    end = ct.tariff.end_date_time
    if end is not None:
        e = parse_datetime(end)
        until = e if until is None else min(until, e)
    return PricesNow(
        energy_kwh=_incl(ct.in_force("ENERGY", m)),
        per_minute=_incl(ct.in_force("TIME", m)) / 60,
        parking_per_minute=_incl(ct.in_force("PARKING_TIME", parked)) / 60,
        flat=_incl(ct.in_force("FLAT", m)),
        valid_until=until,
    )


def energy_price_now(ct: CompiledTariff, now: float) -> Decimal:
    """The ENERGY price in force at ``now``, VAT included (a session's ``price_kwh``)."""
    return prices_at(ct, now).energy_kwh.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def estimate(ct: CompiledTariff, start: float, energy_kwh: Decimal, power_kw: float) -> Decimal:
    """The cost (VAT included, cents) of charging ``energy_kwh`` at ``power_kw`` from
    ``start`` on, no parking: what ``custo_estimado`` shows."""
    seconds = float(energy_kwh) / power_kw * 3600.0 if power_kw > 0 else 0.0
    usage = Usage(start, start + seconds, energy_kwh, True, dec(power_kw))
    return price_compiled(ct, (usage,), start).cost
