"""OCPI 2.2.1 Tariff objects: the structs, their JSON and their validation.

A tariff is exactly the OCPI 2.2.1 ``Tariff`` object (module Tariffs), so the
same struct is read from an operator's file, stored, published and served to
roaming partners. Amounts are :class:`~decimal.Decimal` (JSON numbers on the
wire, never floats inside). Pricing a session under a tariff lives in
:mod:`common.cdr`; this module only holds and checks the model.

Validation raises :class:`TariffInvalid` with one message naming the field
(its JSON path): unknown type or day, negative price, end before start,
currency not three letters, more than :data:`MAX_ELEMENTS` elements.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

import msgspec

from common.errors import EVError

MAX_ELEMENTS: Final = 100
MAX_COMPONENTS: Final = 20
MAX_TARIFFS_PER_FILE: Final = 1000

Dimension = Literal["ENERGY", "FLAT", "PARKING_TIME", "TIME"]
DayOfWeek = Literal["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]
ReservationRestriction = Literal["RESERVATION", "RESERVATION_EXPIRES"]
TariffType = Literal["AD_HOC_PAYMENT", "PROFILE_CHEAP", "PROFILE_FAST", "PROFILE_GREEN", "REGULAR"]
DAYS: Final[tuple[DayOfWeek, ...]] = (
    "MONDAY",
    "TUESDAY",
    "WEDNESDAY",
    "THURSDAY",
    "FRIDAY",
    "SATURDAY",
    "SUNDAY",
)

TimeOfDay = Annotated[str, msgspec.Meta(pattern=r"^([0-1][0-9]|2[0-3]):[0-5][0-9]$")]
DateText = Annotated[
    str, msgspec.Meta(pattern=r"^[12][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")
]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
TariffId = Annotated[str, msgspec.Meta(min_length=1, max_length=36, pattern=r"^[\x21-\x7e]+$")]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]


class TariffInvalid(EVError):
    """A tariff that breaks the model; the message names the field."""

    code = "invalid_tariff"


def _non_negative(value: Decimal | None, name: str) -> None:
    if value is not None and (not value.is_finite() or value < 0):
        raise ValueError(f"`{name}` must be a number >= 0, got {value}")


def parse_datetime(text: str) -> float:
    """Epoch seconds of an OCPI DateTime (``2019-06-30T23:59:59Z``; no zone = UTC)."""
    value = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def format_datetime(epoch: float) -> str:
    """OCPI DateTime in UTC with whole seconds: ``2015-06-29T20:39:09Z``."""
    second = int(epoch // 1)
    if 0 <= second < _YEAR_10000:  # the usual case, twice as fast as strftime
        y, mo, d, h, mi, s, *_ = time.gmtime(second)
        return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z"
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_YEAR_10000: Final = 253402300800  # 10000-01-01T00:00:00Z


class Price(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """OCPI ``Price``: an amount excluding and (optionally) including VAT."""

    excl_vat: Decimal
    incl_vat: Decimal | None = None

    def __post_init__(self) -> None:
        _non_negative(self.excl_vat, "excl_vat")
        _non_negative(self.incl_vat, "incl_vat")


class PriceComponent(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """How one dimension is priced: ``price`` per unit excl. VAT, ``vat`` in %.

    ``step_size`` is in Wh for ENERGY and seconds for TIME / PARKING_TIME
    (ignored for FLAT); required, as in OCPI. 0 is accepted as "bill the measured amount", which is
    how a station's flat ``preco_kwh`` is expressed without rounding energy.
    """

    type: Dimension
    price: Decimal
    step_size: NonNegInt
    vat: Decimal | None = None

    def __post_init__(self) -> None:
        _non_negative(self.price, "price")
        _non_negative(self.vat, "vat")


class TariffRestrictions(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """When the price components of an element apply (all set fields must hold)."""

    start_time: TimeOfDay | None = None
    end_time: TimeOfDay | None = None
    start_date: DateText | None = None
    end_date: DateText | None = None
    min_kwh: Decimal | None = None
    max_kwh: Decimal | None = None
    min_current: Decimal | None = None
    max_current: Decimal | None = None
    min_power: Decimal | None = None
    max_power: Decimal | None = None
    min_duration: NonNegInt | None = None
    max_duration: NonNegInt | None = None
    day_of_week: list[DayOfWeek] | None = None
    reservation: ReservationRestriction | None = None

    def __post_init__(self) -> None:
        for name in ("min_kwh", "max_kwh", "min_current", "max_current", "min_power", "max_power"):
            _non_negative(getattr(self, name), name)
        for d in (self.start_date, self.end_date):
            if d is not None:
                try:
                    date.fromisoformat(d)
                except ValueError:
                    raise ValueError(
                        f"`start_date`/`end_date` is not a calendar date: {d}"
                    ) from None
        if (
            self.start_date is not None
            and self.end_date is not None
            and self.end_date <= self.start_date
        ):
            raise ValueError("`end_date` must be after `start_date`")
        for lo, hi in (
            ("min_kwh", "max_kwh"),
            ("min_current", "max_current"),
            ("min_power", "max_power"),
            ("min_duration", "max_duration"),
        ):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and b < a:
                raise ValueError(f"`{hi}` must not be below `{lo}`")


class TariffElement(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """Price components that share one set of restrictions."""

    price_components: Annotated[
        list[PriceComponent], msgspec.Meta(min_length=1, max_length=MAX_COMPONENTS)
    ]
    restrictions: TariffRestrictions | None = None


class DisplayText(msgspec.Struct, forbid_unknown_fields=True):
    language: Annotated[str, msgspec.Meta(min_length=2, max_length=2)]
    text: Annotated[str, msgspec.Meta(max_length=512)]


class Tariff(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """OCPI 2.2.1 ``Tariff``. ``country_code``/``party_id`` default to the broker's own."""

    id: TariffId
    currency: Currency
    elements: Annotated[list[TariffElement], msgspec.Meta(min_length=1, max_length=MAX_ELEMENTS)]
    country_code: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z]{2}$")] = "BR"
    party_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9]{3}$")] = "EVB"
    type: TariffType | None = None
    tariff_alt_text: list[DisplayText] = []
    tariff_alt_url: Annotated[str, msgspec.Meta(max_length=255)] | None = None
    min_price: Price | None = None
    max_price: Price | None = None
    start_date_time: str | None = None
    end_date_time: str | None = None
    energy_mix: dict[str, Any] | None = None
    last_updated: str | None = None

    def __post_init__(self) -> None:
        bounds: list[float] = []
        for name in ("start_date_time", "end_date_time", "last_updated"):
            text = getattr(self, name)
            if text is not None:
                try:
                    when = parse_datetime(text)
                except ValueError:
                    raise ValueError(f"`{name}` is not an ISO 8601 date-time: {text!r}") from None
                if name != "last_updated":
                    bounds.append(when)
        if (
            self.start_date_time is not None
            and self.end_date_time is not None
            and bounds[1] <= bounds[0]
        ):
            raise ValueError("`end_date_time` must be after `start_date_time`")
        if (
            self.min_price is not None
            and self.max_price is not None
            and self.max_price.excl_vat < self.min_price.excl_vat
        ):
            raise ValueError("`max_price` must not be below `min_price`")

    # --- when the tariff applies --------------------------------------------------

    def valid_at(self, epoch: float) -> bool:
        """True when ``epoch`` is inside ``[start_date_time, end_date_time)``."""
        if self.start_date_time is not None and epoch < parse_datetime(self.start_date_time):
            return False
        return not (self.end_date_time is not None and epoch >= parse_datetime(self.end_date_time))

    def dimensions(self) -> set[str]:
        return {c.type for e in self.elements for c in e.price_components}


_DECODER_ONE = msgspec.json.Decoder(Tariff)
_DECODER_MANY = msgspec.json.Decoder(
    Annotated[list[Tariff], msgspec.Meta(min_length=1, max_length=MAX_TARIFFS_PER_FILE)]
)
ENCODER: Final = msgspec.json.Encoder(decimal_format="number")


def _explain(exc: msgspec.ValidationError | msgspec.DecodeError) -> str:
    return str(exc).replace("Expected `array`", "Expected a tariff or a list of tariffs")


def decode_tariffs(data: bytes) -> list[Tariff]:
    """One tariff or a JSON list of them; raises :class:`TariffInvalid` (field named)."""
    stripped = data.lstrip()
    try:
        if stripped.startswith(b"["):
            tariffs = _DECODER_MANY.decode(data)
        else:
            tariffs = [_DECODER_ONE.decode(data)]
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise TariffInvalid(_explain(exc)) from None
    seen: set[str] = set()
    for i, t in enumerate(tariffs):
        if t.id in seen:
            raise TariffInvalid(f"duplicate tariff `id` {t.id!r} - at `$[{i}].id`")
        seen.add(t.id)
    return tariffs


def tariff_from_builtins(value: Any) -> Tariff:
    """A stored or published tariff (plain JSON types) back as a struct."""
    try:
        return msgspec.convert(value, Tariff, strict=False)
    except msgspec.ValidationError as exc:
        raise TariffInvalid(str(exc)) from None


def encode_tariff(t: Tariff) -> bytes:
    return ENCODER.encode(t)


def tariff_to_builtins(t: Tariff) -> dict[str, Any]:
    """Plain JSON types (decimals as JSON numbers once encoded)."""
    out: dict[str, Any] = msgspec.json.decode(ENCODER.encode(t))
    return out


def flat_tariff(price_kwh: Decimal, currency: str, tariff_id: str = "preco_kwh") -> Tariff:
    """The tariff a point with no assigned tariff is billed by: its station's price,
    VAT included, per measured kWh (no step rounding), so every bill keeps its value."""
    return Tariff(
        id=tariff_id,
        currency=currency,
        elements=[
            TariffElement(
                price_components=[PriceComponent(type="ENERGY", price=price_kwh, step_size=0)]
            )
        ],
    )
