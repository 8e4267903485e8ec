"""The tariff engine against every worked example of the OCPI 2.2.1 Tariffs and
CDRs modules (to the cent), plus properties: splitting a session anywhere never
changes its price, and one ENERGY component is today's flat bill."""

from __future__ import annotations

from datetime import datetime
from decimal import Context, Decimal, localcontext
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.sessions import session_cost
from common.cdr import Bill, CdrPrice, Usage, cdr_to_builtins, coverage_gaps, price_session
from common.tariffs import Tariff, decode_tariffs, flat_tariff

DATA = Path(__file__).parent / "data" / "ocpi"
TZ = ZoneInfo("Europe/Amsterdam")
D = Decimal
MIN = 60
H = 3600


def example(name: str) -> Tariff:
    (t,) = decode_tariffs((DATA / f"{name}.json").read_bytes())
    return t


def at(text: str) -> float:
    """Epoch of a local wall-clock time in the example's zone."""
    return datetime.fromisoformat(text).replace(tzinfo=TZ).timestamp()


def charge(
    start: float, seconds: float, kwh: str = "0", power: str | None = None, amps: str | None = None
) -> Usage:
    return Usage(
        start,
        start + seconds,
        D(kwh),
        True,
        None if power is None else D(power),
        None if amps is None else D(amps),
    )


def park(start: float, seconds: float) -> Usage:
    return Usage(start, start + seconds, D(0), False)


def priced(name: str, *usages: Usage) -> Bill:
    return price_session(example(name), usages, usages[0].start, TZ)


def totals(b: Bill) -> tuple[str, str]:
    p = b.total.price()
    return str(p.excl_vat), str(p.incl_vat)


T0 = at("2024-06-03T09:30")  # a Monday morning


def test_simple_energy_20kwh() -> None:
    assert totals(priced("tariff_8_simple_025kwh", charge(T0, H, "20"))) == ("5.00", "5.50")


def test_energy_step_of_one_wh_rounds_up_the_consumed_wh() -> None:
    b = priced("tariff_8_simple_025kwh", charge(T0, 60, "0.1152"))
    assert b.energy.excl.normalize() == D("0.029")  # 116 Wh x 0.25 / kWh


def test_start_fee_and_energy() -> None:
    assert totals(priced("tariff_9_025kwh_start", charge(T0, H, "20"))) == ("5.50", "6.10")


@pytest.mark.parametrize(("kwh", "expected"), [("20", ("5.00", "5.50")), ("1", ("0.50", "0.55"))])
def test_min_price(kwh: str, expected: tuple[str, str]) -> None:
    assert totals(priced("tariff_12_025kwh_min_price", charge(T0, H, kwh))) == expected


def test_parking_fee_and_start_fee_parking_in_quarters() -> None:
    b = priced("tariff_10_025kwh_parking_start", charge(T0, H, "20"), park(T0 + H, 40 * MIN))
    assert totals(b) == ("7.00", "7.90")
    assert b.parking.price().excl_vat == D("1.50")  # 45 minutes


@pytest.mark.parametrize(
    ("kwh", "expected"), [("50", ("10.00", "11.00")), ("30", ("8.00", "8.85"))]
)
def test_max_price(kwh: str, expected: tuple[str, str]) -> None:
    t = example("tariff_6_025kwh_start_max_price")
    start = datetime(2019, 6, 1, 10, tzinfo=TZ).timestamp()
    assert t.valid_at(start) and not t.valid_at(datetime(2019, 7, 2, tzinfo=TZ).timestamp())
    assert totals(price_session(t, [charge(start, H, kwh)], start, TZ)) == expected


def test_two_euro_per_hour_charging_not_parking() -> None:
    b = priced("tariff_1_simple_2hour", charge(T0, 2.5 * H, "10"), park(T0 + 2.5 * H, H))
    assert totals(b) == ("5.00", "5.50")
    assert b.parking.price().excl_vat == 0


def test_three_per_hour_five_per_hour_parking() -> None:
    b = priced(
        "tariff_13_simple_3hour_5parking",
        charge(T0, 150 * MIN, "30"),
        park(T0 + 150 * MIN, 42 * MIN),
    )
    assert totals(b) == ("11.25", "12.75")


def test_adhoc_alt_text_in_five_minute_steps() -> None:
    assert totals(priced("tariff_2_alt_text", charge(T0, 2.5 * H, "10"))) == ("4.75", "5.00")


def test_alt_url_energy_in_100_wh_steps() -> None:
    b = priced("tariff_3_alt_url", charge(T0, H, "20.45"))
    assert totals(b) == ("5.63", "6.24")
    assert b.energy.price() == b.energy.price().__class__(D("5.13"), D("5.64"))
    assert b.fixed.price().incl_vat == D("0.60")


def test_complex_monday_low_current() -> None:
    b = priced(
        "tariff_4_complex", charge(T0, 165 * MIN, "11", amps="16"), park(T0 + 165 * MIN, 42 * MIN)
    )
    assert totals(b) == ("9.00", "10.30")
    assert b.time.price().excl_vat == D("2.75")
    assert b.parking.price().excl_vat == D("3.75")
    assert b.fixed.price().excl_vat == D("2.50")


def test_complex_saturday_high_current() -> None:
    sat = at("2024-06-08T13:30")
    b = priced(
        "tariff_4_complex", charge(sat, 114 * MIN, "40", amps="43"), park(sat + 114 * MIN, 71 * MIN)
    )
    # The example's table prices 114 minutes at 1.25 / h as 2.28 (114 minutes at
    # 1.20 / h, a price this tariff does not have) and totals 12.28 / 13.861. Its
    # own rule gives 2.375: 2.50 + 2.375 + 7.50 = 12.375 excl. VAT and
    # 2.875 + 2.85 + 8.25 = 13.975 incl. VAT; the flat fee and the 75 minutes of
    # parking are the example's to the cent.
    assert b.time.excl == D("2.375")
    assert b.parking.price() == CdrPrice(D("7.50"), D("8.25"))
    assert b.fixed.price() == CdrPrice(D("2.50"), D("2.88"))
    assert totals(b) == ("12.38", "13.98")


def test_free_of_charge() -> None:
    assert totals(priced("tariff_5_free_of_charge", charge(T0, H, "20"), park(T0 + H, H))) == (
        "0.00",
        "0.00",
    )


def test_step_size_switching_element_one() -> None:
    t = at("2024-06-03T16:55")
    b = priced("tariff_14_step_size", charge(t, 10 * MIN, "2"), park(t + 10 * MIN, 2 * MIN))
    assert b.time.price().excl_vat == D("0.30")
    assert b.parking.price().excl_vat == D("0.25")
    assert b.total.price().excl_vat == D("0.55")


def test_step_size_switching_element_two() -> None:
    t = at("2024-06-03T16:35")
    b = priced("tariff_14_step_size", charge(t, 35 * MIN, "5"))
    assert b.total.price().excl_vat == D("1.30")


def test_step_size_switching_to_free_of_charge() -> None:
    t = at("2024-06-03T19:40")
    b = priced("tariff_14_step_size", charge(t, 12 * MIN, "2"), park(t + 12 * MIN, 20 * MIN))
    assert b.time.price().excl_vat == D("0.48")
    assert b.parking.price().excl_vat == D("0.25")
    assert b.total.price().excl_vat == D("0.73")


def test_max_power_restrictions() -> None:
    b = priced(
        "tariffrestriction_example_max_power",
        charge(T0, 600, "1", power="6"),
        charge(T0 + 600, 3000, "40", power="48"),
        charge(T0 + 3600, 450, "0.5", power="4"),
    )
    assert b.total.price().excl_vat == D("20.30")


def test_max_duration_restrictions() -> None:
    b = priced(
        "tariffrestriction_example_max_duration",
        charge(T0, 30 * MIN, "5"),
        charge(T0 + 30 * MIN, 10 * MIN, "1.2"),
    )
    assert b.total.price().excl_vat == D("0.30")
    # one stretch told as a whole is cut at 30 minutes all the same
    one = priced("tariffrestriction_example_max_duration", charge(T0, 40 * MIN, "4"))
    assert one.total.price().excl_vat == D("0.25")  # 1 kWh after the free half hour


def test_reservation_elements_do_not_price_a_session() -> None:
    assert totals(priced("tariff_15_reservation_5_euro_per_hour", charge(T0, H, "20"))) == (
        "5.50",
        "6.10",
    )


def test_cdr_example_time_tariff() -> None:
    """The CDRs module's example: 1.973 h at 2.00/h in 5-minute steps -> 4.00 / 4.40."""
    t = example("tariff_put_example")
    start = datetime(2015, 6, 29, 21, 39, 9, tzinfo=ZoneInfo("UTC")).timestamp()
    b = price_session(t, [charge(start, 7103, "15.342")], start, TZ)
    cdr = b.cdr(cdr_id="12345", tariff=t, start=start, end=start + 7103, now=start + 7103)
    out = cdr_to_builtins(cdr)
    assert out["total_cost"] == {"excl_vat": 4.0, "incl_vat": 4.4}
    assert out["total_time"] == 1.9731 and out["total_energy"] == 15.342
    assert out["start_date_time"] == "2015-06-29T21:39:09Z"
    assert out["charging_periods"][0]["dimensions"][1] == {"type": "TIME", "volume": 1.9731}


def test_periods_split_where_the_element_in_force_changes() -> None:
    t = at("2024-06-03T16:50")
    b = priced("tariff_14_step_size", charge(t, 20 * MIN, "4"), park(t + 20 * MIN, 5 * MIN))
    starts = [(p[0], p[1]) for p in b.periods]
    assert [float(s) - t for s, _ in starts] == [0, 10 * MIN, 20 * MIN]
    assert [c for _, c in starts] == [True, True, False]
    assert sum(p[2] for p in b.periods) == D(4)


def test_coverage_gaps() -> None:
    assert coverage_gaps(example("tariff_14_step_size")) == ["PARKING_TIME"]
    assert coverage_gaps(example("tariff_8_simple_025kwh")) == []
    assert coverage_gaps(example("tariff_4_complex")) == ["PARKING_TIME", "TIME"]


# --- properties ------------------------------------------------------------------------

TOU = decode_tariffs(
    b"""{"id": "tou", "currency": "BRL", "min_price": {"excl_vat": 1.00},
    "elements": [
      {"price_components": [{"type": "FLAT", "price": 0.75, "vat": 12, "step_size": 1}]},
      {"price_components": [{"type": "ENERGY", "price": 1.10, "vat": 12, "step_size": 100},
                            {"type": "TIME", "price": 0.60, "step_size": 60}],
       "restrictions": {"start_time": "18:00", "end_time": "21:00"}},
      {"price_components": [{"type": "ENERGY", "price": 0.70, "vat": 12, "step_size": 100}],
       "restrictions": {"min_kwh": 5, "day_of_week": ["SATURDAY", "SUNDAY"]}},
      {"price_components": [{"type": "ENERGY", "price": 0.80, "vat": 12, "step_size": 100},
                            {"type": "TIME", "price": 0.30, "step_size": 60}],
       "restrictions": {"max_duration": 5400}},
      {"price_components": [{"type": "ENERGY", "price": 0.90, "vat": 12, "step_size": 100},
                            {"type": "PARKING_TIME", "price": 6.00, "vat": 12, "step_size": 300}]}
    ]}"""
)[0]
BASE = at("2024-06-07T16:00")  # a Friday afternoon


@st.composite
def sessions(draw: st.DrawFn) -> list[Usage]:
    t = BASE + draw(st.integers(0, 3 * 24 * H))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        secs = draw(st.integers(1, 3 * H))
        kwh = D(draw(st.integers(0, 30_000))) / 1000
        out.append(Usage(t, t + secs, kwh, True, D(draw(st.sampled_from([7, 11, 22])))))
        t += secs
    if draw(st.booleans()):
        out.append(Usage(t, t + draw(st.integers(1, 2 * H)), D(0), False))
    return out


def split(usages: list[Usage], index: int, frac: float) -> list[Usage]:
    u = usages[index % len(usages)]
    cut = u.start + (u.end - u.start) * frac
    if not u.start < cut < u.end:
        return usages
    first_energy = (
        u.energy_kwh
        * (Decimal(repr(cut)) - Decimal(repr(u.start)))
        / (Decimal(repr(u.end)) - Decimal(repr(u.start)))
    )
    i = usages.index(u)
    with localcontext(Context(prec=60)):  # the two parts add up to the whole exactly
        rest = u.energy_kwh - first_energy
    return [
        *usages[:i],
        Usage(u.start, cut, first_energy, u.charging, u.power_kw),
        Usage(cut, u.end, rest, u.charging, u.power_kw),
        *usages[i + 1 :],
    ]


@settings(max_examples=150, deadline=None)
@given(sessions(), st.integers(0, 10), st.floats(0.01, 0.99))
def test_splitting_a_session_anywhere_never_changes_its_price(
    usages: list[Usage], index: int, frac: float
) -> None:
    whole = price_session(TOU, usages, usages[0].start, TZ)
    parts = price_session(TOU, split(usages, index, frac), usages[0].start, TZ)
    assert whole.total.price() == parts.total.price()
    assert whole.energy.price() == parts.energy.price()
    assert whole.time.price() == parts.time.price()
    assert whole.parking.price() == parts.parking.price()
    assert len(whole.periods) == len(parts.periods)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 10**6).map(lambda n: D(n) / 1000),
    st.decimals(min_value=0, max_value=20, places=2, allow_nan=False),
    st.integers(1, 10 * H),
)
def test_one_energy_component_is_the_flat_bill(energy: Decimal, price: Decimal, secs: int) -> None:
    b = price_session(flat_tariff(price, "BRL"), [Usage(BASE, BASE + secs, energy)], BASE, TZ)
    assert b.cost == session_cost(energy, price)
    assert b.total.price().excl_vat == session_cost(energy, price)


@settings(max_examples=150, deadline=None)
@given(
    sessions(),
    st.sampled_from([None, "ses-1"]),
    st.sampled_from([None, "CAR1"]),
    st.sampled_from([("BR", "EVB"), ("NL", "ABC")]),
)
def test_the_cdr_built_as_builtins_is_the_encoded_cdr(
    usages: list[Usage], session_id: str | None, token: str | None, party: tuple[str, str]
) -> None:
    """The core publishes ``Bill.cdr_builtins``: the same dict, value for value and
    type for type (so the same JSON bytes), as the CDR struct encoded and decoded."""
    import json

    import msgspec

    tariff = msgspec.structs.replace(TOU, country_code=party[0], party_id=party[1])
    bill = price_session(tariff, usages, usages[0].start, TZ)
    end = usages[-1].end
    for now in (end, end + 7.5):
        remark = None if token else "unplugged"
        direct = bill.cdr_builtins(
            cdr_id="cdr-1", tariff=tariff, start=usages[0].start, end=end, now=now,
            session_id=session_id, token=token, remark=remark,
        )  # fmt: skip
        encoded = cdr_to_builtins(
            bill.cdr(
                cdr_id="cdr-1", tariff=tariff, start=usages[0].start, end=end, now=now,
                session_id=session_id, token=token, remark=remark,
            )
        )  # fmt: skip
        assert json.dumps(direct) == json.dumps(encoded)
        assert direct == encoded


@st.composite
def restrictions(draw: st.DrawFn) -> dict[str, object] | None:
    r: dict[str, object] = {}
    if draw(st.booleans()):
        return None
    if draw(st.booleans()):
        r["start_time"] = f"{draw(st.integers(0, 23)):02d}:{draw(st.sampled_from([0, 30])):02d}"
        r["end_time"] = f"{draw(st.integers(0, 23)):02d}:00"
    if draw(st.booleans()):
        r["min_kwh"] = draw(st.integers(0, 10))
    if draw(st.booleans()):
        r["max_power"] = draw(st.sampled_from([8, 16, 32]))
    if draw(st.booleans()):
        r["max_duration"] = draw(st.integers(60, 3 * H))
    if draw(st.booleans()):
        r["day_of_week"] = draw(st.lists(st.sampled_from(["FRIDAY", "SATURDAY"]), min_size=1))
    return r or None


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    elements = []
    for _ in range(draw(st.integers(1, 4))):
        dims = draw(
            st.lists(
                st.sampled_from(["ENERGY", "TIME", "PARKING_TIME", "FLAT"]), min_size=1, max_size=3
            )
        )
        components = [
            {
                "type": d,
                "price": draw(st.integers(0, 500)) / 100,
                "step_size": draw(st.sampled_from([0, 1, 60, 100, 300])),
                **({"vat": 12} if draw(st.booleans()) else {}),
            }
            for d in dims
        ]
        element: dict[str, object] = {"price_components": components}
        r = draw(restrictions())
        if r is not None:
            element["restrictions"] = r
        elements.append(element)
    body = {"id": "t", "currency": "BRL", "elements": elements}
    if draw(st.booleans()):
        body["min_price"] = {"excl_vat": 1.0}
    import json

    (t,) = decode_tariffs(json.dumps(body).encode())
    return t


@settings(max_examples=300, deadline=None)
@given(tariffs(), sessions())
def test_the_fast_path_prices_as_the_general_path(tariff: Tariff, usages: list[Usage]) -> None:
    """A tariff without clock, duration or kWh restrictions is priced one piece per
    stretch, and a dimension whose first element is unrestricted without checking
    restrictions: the bill (every amount, every period) is the general path's."""
    from common.cdr import CompiledTariff, price_compiled

    ct = CompiledTariff(tariff, TZ)
    fast = price_compiled(ct, usages, usages[0].start)
    general = price_compiled(ct, usages, usages[0].start, fast=False)
    for name in ("energy", "time", "parking", "fixed", "total"):
        f, g = getattr(fast, name), getattr(general, name)
        assert (f.excl, f.incl) == (g.excl, g.incl), name
    assert fast.periods == general.periods
    assert (fast.total_energy, fast.total_seconds, fast.parking_seconds) == (
        general.total_energy,
        general.total_seconds,
        general.parking_seconds,
    )
    stretches = [u for u in usages if u.start < u.end]
    if ct.cutless and stretches:
        assert len(fast.periods) <= len(stretches)
