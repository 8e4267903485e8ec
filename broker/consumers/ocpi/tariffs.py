"""The broker's tariffs as OCPI serves them (pure): the tariff engine's own book.

The operator's tariffs and their assignments to points live in the broker
(docs/tariffs.md); every change is a ``tariff.updated`` bus event. This module
keeps the tariff engine's :class:`~common.tariff_book.TariffBook`, fed
with those events in seq order (set -> ``put``, assign -> ``assign``, remove ->
``remove``), so a point's tariff here is the one the broker prices it by, by
the broker's own rule. A point no valid tariff prices is priced by its
announced ``preco_kwh`` (the engine's :func:`~common.tariffs.flat_tariff`),
served as a tariff of its own per price. Nothing is priced here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from typing import Any, Literal

from broker.consumers.ocpi.mapping import Site, tariff_id_for_price
from common.tariff_book import TariffBook
from common.tariffs import (
    Tariff,
    TariffInvalid,
    flat_tariff,
    tariff_from_builtins,
    tariff_to_builtins,
)
from common.timeutil import format_timestamp


@dataclass(frozen=True, slots=True)
class TariffChange:
    tariff_id: str
    action: Literal["set", "assign", "remove"]


class TariffCatalog:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.book = TariffBook(UTC)  # the zone only matters for pricing, not done here
        self.updated: dict[str, float] = {}

    def apply(self, data: Mapping[str, Any], ts: float) -> TariffChange | None:
        """One ``tariff.updated``; None when it cannot be applied (logged by the caller)."""
        tid, action = data.get("tariff_id"), data.get("action")
        if not isinstance(tid, str):
            return None
        if action == "set" and isinstance(data.get("tariff"), Mapping):
            try:
                self.book.put(tariff_from_builtins(data["tariff"]))
            except TariffInvalid:
                return None
        elif action == "assign" and isinstance(data.get("points"), str):
            if self.book.get(tid) is None:
                return None
            self.book.assign(data["points"], tid)
        elif action == "remove":
            self.book.remove(tid)
        else:
            return None
        self.updated[tid] = ts
        return TariffChange(tid, action)

    def tariff_id_for(self, point_id: str, price_kwh: float | None, now: float) -> str:
        t = self.book.tariff_for(point_id, now)
        return t.id if t is not None else tariff_id_for_price(price_kwh)

    def ocpi(self, t: Tariff, last_updated: float) -> dict[str, Any]:
        """The engine's tariff as this CPO's OCPI Tariff object."""
        out = tariff_to_builtins(t)
        out["country_code"], out["party_id"] = self.site.country_code, self.site.party_id
        out.setdefault("last_updated", format_timestamp(last_updated))
        return out

    def get(self, tariff_id: str) -> dict[str, Any] | None:
        t = self.book.get(tariff_id)
        return None if t is None else self.ocpi(t, self.updated.get(tariff_id, 0.0))

    def every(self, points: Iterable[tuple[str, float | None, float]], now: float) -> list[Any]:
        """The operator's tariffs, then one flat tariff per price of points none prices;
        ``points`` are ``(id, preco_kwh, last_updated)``."""
        out: dict[str, dict[str, Any]] = {
            t.id: self.ocpi(t, self.updated.get(t.id, now)) for t in self.book.tariffs()
        }
        for pid, price, when in points:
            if self.book.tariff_for(pid, now) is not None:
                continue
            tid = tariff_id_for_price(price)
            if tid not in out:
                flat = flat_tariff(Decimal(str(price or 0)), self.site.currency, tid)
                out[tid] = self.ocpi(flat, when)
        return [out[k] for k in sorted(out)]
