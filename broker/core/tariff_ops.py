"""Operator tariff requests (history op ``tariffs``): set, assign, remove, list.

Each change is persisted (table ``tariff``, meta ``tariff_assignments``),
published as ``tariff.updated`` and applies to sessions that START after it: a
running session keeps the tariff it started with (it holds its own copy).
Replies are plain maps: ``{"ok": true, "seq": S, ...}`` or ``{"error": ...}``.
"""

from __future__ import annotations

from typing import Any, Final

from broker.core.effects import Effect, Persist
from broker.core.engine import Engine
from common.cdr import coverage_gaps
from common.events import TariffUpdated
from common.tariff_book import ASSIGNMENTS_KEY, MAX_RULES, MAX_TARIFFS
from common.tariffs import (
    TariffInvalid,
    decode_tariffs,
    format_datetime,
    tariff_to_builtins,
)

MAX_PATTERN: Final = 200
ACTIONS: Final = ("set", "assign", "remove", "list")


def handle(
    eng: Engine,
    action: Any,
    tariffs_json: Any,
    tariff_id: Any,
    points: Any,
    by: str,
    now: float,
) -> tuple[dict[str, Any], list[Effect]]:
    fx: list[Effect] = []
    book = eng.tariffs
    if action == "list":
        return listing(eng), fx
    if action == "set":
        if not isinstance(tariffs_json, str | bytes):
            return {"error": "tariffs: the JSON text of a tariff or a list is required"}, fx
        raw = tariffs_json.encode() if isinstance(tariffs_json, str) else tariffs_json
        try:
            tariffs = decode_tariffs(raw)
        except TariffInvalid as exc:
            return {"error": f"invalid tariff: {exc.message}"}, fx
        new = {t.id for t in tariffs} - {t.id for t in book.tariffs()}
        if len(book) + len(new) > MAX_TARIFFS:
            return {"error": f"tariffs: at most {MAX_TARIFFS} tariffs"}, fx
        warnings: list[str] = []
        for t in tariffs:
            if t.last_updated is None:
                t.last_updated = format_datetime(now)
            book.put(t)
            fx.append(Persist("tariff", t.id, book.record(t)))
            eng.publish(
                fx,
                TariffUpdated(tariff_id=t.id, action="set", by=by, tariff=tariff_to_builtins(t)),
                now,
            )
            warnings.extend(
                f"tariff {t.id}: {dim} has no price at some moments (costs 0 then)"
                for dim in coverage_gaps(t)
            )
        reply = {"ok": True, "seq": eng.seq, "tariffs": [t.id for t in tariffs]}
        return {**reply, "warnings": warnings}, fx
    if not isinstance(tariff_id, str) or not tariff_id:
        return {"error": "tariff_id: a tariff id is required"}, fx
    if book.get(tariff_id) is None:
        return {"error": f"unknown tariff {tariff_id!r}"}, fx
    if action == "assign":
        if not isinstance(points, str) or not 1 <= len(points) <= MAX_PATTERN:
            return {"error": f"points: a pattern of 1-{MAX_PATTERN} characters is required"}, fx
        if len(book.rules()) >= MAX_RULES:
            return {"error": f"points: at most {MAX_RULES} assignments"}, fx
        book.assign(points, tariff_id)
        fx.append(Persist("meta", ASSIGNMENTS_KEY, book.assignments_record()))
        eng.publish(
            fx, TariffUpdated(tariff_id=tariff_id, action="assign", by=by, points=points), now
        )
        matched = [pid for pid in eng.point_ids() if book.tariff_id_of(pid) == tariff_id]
        return {"ok": True, "seq": eng.seq, "points": len(matched)}, fx
    if action == "remove":
        book.remove(tariff_id)
        fx.append(Persist("tariff", tariff_id, None))
        fx.append(Persist("meta", ASSIGNMENTS_KEY, book.assignments_record()))
        eng.publish(fx, TariffUpdated(tariff_id=tariff_id, action="remove", by=by), now)
        return {"ok": True, "seq": eng.seq}, fx
    return {"error": f"action: one of {', '.join(ACTIONS)}"}, fx


def listing(eng: Engine) -> dict[str, Any]:
    book = eng.tariffs
    return {
        "tariffs": [tariff_to_builtins(t) for t in book.tariffs()],
        "assignments": [{"points": p, "tariff_id": t} for p, t in book.rules()],
    }
