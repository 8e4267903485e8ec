"""The operator's tariffs and which points they price (pure, no I/O).

Tariffs are kept by id; assignments are ``(pattern, tariff_id)`` rules in the
order they were made, a point's tariff being the tariff of the LAST rule whose
shell-style pattern matches its id (so a later, narrower ``assign`` overrides
an earlier, wider one). A point no rule matches, or whose tariff is not valid
now (``start_date_time`` / ``end_date_time``), is priced by its station's
``preco_kwh`` as today. Lookups are cached per point and the cache is dropped
on every change; prepared (compiled) tariffs are cached per tariff.
"""

from __future__ import annotations

import math
from datetime import UTC, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from fnmatch import fnmatchcase
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker.core.sessions import session_cost, to_decimal
from common.cdr import CompiledTariff, estimate, prices_at
from common.replies import TariffView
from common.tariffs import Tariff, tariff_from_builtins, tariff_to_builtins
from common.timeutil import format_timestamp, site_zone

ASSIGNMENTS_KEY: Final = "tariff_assignments"
PRICE: Final = Decimal("0.0001")
MAX_TARIFFS: Final = 10_000
MAX_RULES: Final = 10_000


def tz_name(tz: tzinfo) -> str:
    """The IANA name of a zone (``UTC`` for the fixed UTC zone)."""
    key = getattr(tz, "key", None)
    return key if isinstance(key, str) else str(tz)


def tz_of(name: str) -> tzinfo:
    """The zone named ``name`` (ValueError when unknown). ``localtime`` (a core using
    its machine's zone) is this machine's zone: gateways run beside their core."""
    if name in ("UTC", "UTC+00:00"):
        return UTC
    if name == "localtime":
        return site_zone(None)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


class TariffBook:
    __slots__ = ("_by_point", "_compiled", "_flat", "_rules", "_tariffs", "tz")

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self._tariffs: dict[str, Tariff] = {}
        self._rules: list[tuple[str, str]] = []
        self._by_point: dict[str, CompiledTariff | None] = {}
        self._compiled: dict[str, CompiledTariff] = {}
        self._flat: dict[tuple[float, float], float] = {}  # flat estimates, memoised

    def __len__(self) -> int:
        return len(self._tariffs)

    @property
    def empty(self) -> bool:
        return not self._rules

    def get(self, tariff_id: str) -> Tariff | None:
        return self._tariffs.get(tariff_id)

    def tariffs(self) -> list[Tariff]:
        return [self._tariffs[k] for k in sorted(self._tariffs)]

    def rules(self) -> list[tuple[str, str]]:
        return list(self._rules)

    # --- changes ------------------------------------------------------------------------

    def put(self, t: Tariff) -> None:
        self._tariffs[t.id] = t
        self._compiled.pop(t.id, None)
        self._by_point.clear()

    def remove(self, tariff_id: str) -> bool:
        if self._tariffs.pop(tariff_id, None) is None:
            return False
        self._compiled.pop(tariff_id, None)
        self._rules = [r for r in self._rules if r[1] != tariff_id]
        self._by_point.clear()
        return True

    def assign(self, pattern: str, tariff_id: str) -> None:
        self._rules = [r for r in self._rules if r[0] != pattern]
        self._rules.append((pattern, tariff_id))
        self._by_point.clear()

    def assignments_record(self) -> dict[str, Any]:
        return {"rules": [list(r) for r in self._rules]}

    def restore_assignments(self, value: dict[str, Any]) -> None:
        self._rules = [(str(p), str(t)) for p, t in value.get("rules", [])]
        self._by_point.clear()

    def snapshot(self) -> dict[str, Any]:
        """The tariffs, the assignments and the time zone they are read in, as plain
        data (a core snapshot's ``tariffs``; :meth:`from_snapshot` reads it back)."""
        return {
            "tz": tz_name(self.tz),
            "tariffs": [tariff_to_builtins(self._tariffs[k]) for k in sorted(self._tariffs)],
            "assignments": self.assignments_record(),
        }

    @classmethod
    def from_snapshot(cls, value: dict[str, Any]) -> TariffBook:
        """The book of a snapshot's ``tariffs`` (raises ValueError/TypeError/KeyError
        or :class:`~common.tariffs.TariffInvalid` when it does not fit)."""
        book = cls(tz_of(str(value["tz"])))
        for t in value.get("tariffs") or ():
            book.restore_tariff(t)
        book.restore_assignments(value.get("assignments") or {})
        return book

    def restore_tariff(self, value: dict[str, Any]) -> None:
        self.put(tariff_from_builtins(value))

    @staticmethod
    def record(t: Tariff) -> dict[str, Any]:
        return tariff_to_builtins(t)

    # --- lookups ------------------------------------------------------------------------

    def tariff_id_of(self, point_id: str) -> str | None:
        """The id of the tariff assigned to ``point_id`` (validity not checked)."""
        ct = self._compiled_of(point_id)
        return None if ct is None else ct.tariff.id

    def _compiled_of(self, point_id: str) -> CompiledTariff | None:
        """The prepared tariff assigned to ``point_id`` (cached per point until a change)."""
        try:
            return self._by_point[point_id]
        except KeyError:
            pass
        found: CompiledTariff | None = None
        for pattern, tid in reversed(self._rules):
            if fnmatchcase(point_id, pattern):
                t = self._tariffs.get(tid)
                found = None if t is None else self.compiled(t)
                break
        if len(self._by_point) > 100_000:
            self._by_point.clear()
        self._by_point[point_id] = found
        return found

    def tariff_for(self, point_id: str, now: float) -> Tariff | None:
        """The tariff pricing a session starting now at ``point_id``, or None (flat)."""
        if not self._rules:
            return None
        ct = self._compiled_of(point_id)
        if ct is None or not ct.valid_from <= now < ct.valid_to:
            return None
        return ct.tariff

    def compiled(self, t: Tariff) -> CompiledTariff:
        c = self._compiled.get(t.id)
        if c is None or c.tariff is not t:
            c = self._compiled[t.id] = CompiledTariff(t, self.tz)
        return c

    # --- what drivers see -------------------------------------------------------------

    def view(self, point_id: str, power_kw: float, now: float) -> TariffView | None:
        """``tarifa`` of a point now (the same object while its prices hold), or None."""
        if not self._rules:
            return None
        ct = self._by_point.get(point_id) or self._compiled_of(point_id)
        if ct is None or not ct.valid_from <= now < ct.valid_to:
            return None
        t = ct.tariff
        hit = ct.views.get(power_kw)
        if hit is not None and hit[0] <= now < hit[1]:
            # the cache holds only TariffViews (typed object in common.cdr, below the core)
            return hit[2]  # type: ignore[return-value]
        prices = prices_at(ct, now, power_kw)
        until = math.inf if prices.valid_until is None else prices.valid_until
        view = TariffView(
            id=t.id,
            currency=t.currency,
            energy_kwh=float(prices.energy_kwh.quantize(PRICE, ROUND_HALF_UP)),
            per_minute=float(prices.per_minute.quantize(PRICE, ROUND_HALF_UP)),
            parking_per_minute=float(prices.parking_per_minute.quantize(PRICE, ROUND_HALF_UP)),
            flat=float(prices.flat.quantize(PRICE, ROUND_HALF_UP)),
            valid_until=None if prices.valid_until is None else format_timestamp(until),
        )
        if len(ct.views) > 1000:
            ct.views.clear()
        ct.views[power_kw] = (now, until, view)
        return view

    def estimate(
        self, point_id: str, power_kw: float, start: float, energy: float, price_kwh: float
    ) -> float:
        """``custo_estimado``: charging ``energy`` kWh at ``power_kw`` from ``start`` on,
        under the point's tariff then, or its flat ``price_kwh``; VAT included, cents."""
        ct = (self._by_point.get(point_id) or self._compiled_of(point_id)) if self._rules else None
        if ct is None or not ct.valid_from <= start < ct.valid_to:
            flat = self._flat.get((energy, price_kwh))
            if flat is None:
                if len(self._flat) > 10_000:
                    self._flat.clear()
                flat = float(session_cost(to_decimal(energy), to_decimal(price_kwh)))
                self._flat[(energy, price_kwh)] = flat
            return flat
        key = (power_kw, energy, int(start // 60))
        cost = ct.estimates.get(key)
        if cost is None:
            if len(ct.estimates) > 10_000:
                ct.estimates.clear()
            cost = ct.estimates[key] = float(
                estimate(ct, float(key[2] * 60), to_decimal(energy), power_kw)
            )
        return cost
