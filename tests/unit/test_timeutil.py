"""ISO 8601 timestamps <-> epoch seconds."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.timeutil import format_timestamp, parse_timestamp

APRIL_7 = 1744020009.0  # 2025-04-07T10:00:09Z

# a shared, loaded machine must not turn slow data generation into failures
SLOW_OK = [HealthCheck.too_slow]


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2025-04-07T10:00:09", APRIL_7),  # the original client: naive means UTC
        ("2025-04-07T10:00:09Z", APRIL_7),
        ("2025-04-07T10:00:09z", APRIL_7),
        ("2025-04-07T10:00:09+00:00", APRIL_7),
        ("2025-04-07T13:00:09+03:00", APRIL_7),
        ("2025-04-07T07:00:09-03:00", APRIL_7),
        ("2025-04-07T10:00:09.250Z", APRIL_7 + 0.25),
        ("  2025-04-07T10:00:09  ", APRIL_7),
        ("2025-04-07", APRIL_7 - 36009),
        ("1970-01-01T00:00:00Z", 0.0),
    ],
)
def test_parse_timestamp(text: str, epoch: float) -> None:
    assert parse_timestamp(text) == pytest.approx(epoch, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "ontem", "2025-13-01T00:00:00", "2025-04-07T25:00:00", "2025-02-30", "10:00"],
)
def test_parse_timestamp_refuses_non_timestamps(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_parse_timestamp_refuses_non_strings() -> None:
    with pytest.raises(ValueError):
        # (ignored below) a wrong argument type on purpose
        parse_timestamp(1744020009)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        # (ignored below) a wrong argument type on purpose
        parse_timestamp(None)  # type: ignore[arg-type]


def test_format_timestamp() -> None:
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(APRIL_7) == "2025-04-07T10:00:09.000Z"
    assert format_timestamp(APRIL_7 + 0.9999) == "2025-04-07T10:00:09.999Z"
    assert format_timestamp(APRIL_7 + 0.25) == "2025-04-07T10:00:09.250Z"


@given(st.floats(min_value=-2e9, max_value=4e9, allow_nan=False))
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_format_then_parse_is_exact_to_the_millisecond(epoch: float) -> None:
    text = format_timestamp(epoch)
    assert len(text) == 24 and text.endswith("Z")
    assert parse_timestamp(text) == pytest.approx(math.floor(epoch * 1000) / 1000, abs=1.5e-3)


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
    ),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_parse_agrees_with_datetime(moment: datetime, offset_min: int) -> None:
    naive = moment.isoformat()
    assert parse_timestamp(naive) == pytest.approx(moment.replace(tzinfo=UTC).timestamp())
    zone = timezone(timedelta(minutes=offset_min))
    zoned = moment.replace(tzinfo=zone)
    assert parse_timestamp(zoned.isoformat()) == pytest.approx(zoned.timestamp())


@given(st.text(max_size=40))
@settings(deadline=None, suppress_health_check=SLOW_OK)
def test_whatever_fromisoformat_accepts_parses(text: str) -> None:
    """The request decoder checks timestamps with fromisoformat first, relying on this."""
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return
    assert isinstance(parse_timestamp(text), float)


@pytest.mark.parametrize("epoch", [1e20, -1e20, float("inf"), float("nan")])
def test_format_timestamp_out_of_range_is_a_value_error(epoch: float) -> None:
    with pytest.raises(ValueError):
        format_timestamp(epoch)
