"""Money and measured figures as exact decimals (no I/O): shared by the core's bills, the
tariff book and every process that prices a session."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Final

CENT: Final = Decimal("0.01")


def to_decimal(value: float) -> Decimal:
    """The decimal a human reads in ``value`` (``repr``), not its binary expansion."""
    return Decimal(repr(float(value)))


def session_cost(energy: Decimal, price_kwh: Decimal) -> Decimal:
    """``energy * price`` rounded half-up to cents."""
    return (energy * price_kwh).quantize(CENT, rounding=ROUND_HALF_UP)
