"""The billing worker, its report and the reconciliation with the broker's accounts.

The worker is a :class:`broker.consumers.subscriber.Sink` for ``charging.completed``:
each batch of bills and the applied seq go to the :class:`Ledger` in one
transaction. It starts from the ledger's stored seq, so after a crash or a
long stop it catches up from history and ends with exactly the sessions the
broker billed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from rich.console import Console, Group
from rich.table import Table

from broker.consumers.billing.ledger import Account, Bill, Entry, LedgerBase, to_iso, to_money
from broker.consumers.subscriber import Endpoint, HistoryClient
from common.errors import BusProtocolError, TransportError
from common.events import ChargingCompleted, decode_data
from common.messages import BusEvent
from common.timeutil import parse_timestamp

log = logging.getLogger(__name__)

TOPIC: Final = ChargingCompleted.TOPIC
SEQ_FLUSH_S: Final = 1.0  # how often a bare seq advance (no bill) is written


class BillingSink:
    """Writes ``charging.completed`` events to the ledger, with the applied seq."""

    def __init__(self, ledger: LedgerBase) -> None:
        self.ledger = ledger
        self.billed = 0
        self.invalid = 0
        self._pending_seq = 0
        self._flushed_at = 0.0

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:  # not used: seq mode
        return None

    def on_batch(self, events: Sequence[BusEvent], applied_seq: int) -> None:
        entries: list[Entry] = []
        for ev in events:
            if ev.topic != TOPIC:
                continue
            try:
                data = decode_data(ChargingCompleted, ev.data)
                entries.append(Entry("", ev.seq, Bill.from_event(data), published_at=ev.ts))
            except (ValueError, BusProtocolError) as exc:
                self.invalid += 1
                log.error("seq %d: charging.completed not billable: %s", ev.seq, exc)
        now = time.monotonic()
        self._pending_seq = applied_seq
        if entries or now - self._flushed_at >= SEQ_FLUSH_S:
            added = self.ledger.write(entries, applied_seq)
            self.billed += added
            self._flushed_at = now
            for e in entries[-added:] if added else []:
                b = e.bill
                log.info("billed %s %s %s %s", b.session_id, b.vehicle_id, b.cost, b.currency)

    def flush(self) -> None:
        """Store the applied seq (on shutdown)."""
        if self._pending_seq > self.ledger.last_seq:
            self.ledger.apply([], self._pending_seq)


# --- report -------------------------------------------------------------------------


def report_json(accounts: dict[str, Account]) -> str:
    return json.dumps(
        {"accounts": {vid: acc.as_json() for vid, acc in sorted(accounts.items())}},
        ensure_ascii=False,
        indent=2,
    )


CSV_FIELDS: Final = (
    "vehicle_id", "session_id", "point_id", "started_at", "ended_at", "energy_kwh",
    "price_kwh", "cost", "currency", "payment_method", "reason",
)  # fmt: skip


def report_csv(accounts: dict[str, Account]) -> str:
    """One line per session (totals are the sum of ``cost`` per vehicle)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for vid in sorted(accounts):
        for b in accounts[vid].sessions:
            w.writerow(
                [
                    vid, b.session_id, b.point_id, b.started_at, b.ended_at, b.energy_kwh,
                    b.price_kwh, f"{b.cost:.2f}", b.currency, b.payment_method, b.reason,
                ]
            )  # fmt: skip
    return buf.getvalue()


def report_table(accounts: dict[str, Account]) -> Group:
    """A rich table per vehicle: session lines then the total."""
    parts: list[Any] = []
    if not accounts:
        parts.append("no billed sessions")
    for vid in sorted(accounts):
        acc = accounts[vid]
        t = Table(title=f"{vid}: {acc.total:.2f} {acc.currency}", title_justify="left")
        for col in ("session", "point", "start", "end", "kWh", "cost", "payment"):
            t.add_column(col, justify="right" if col in ("kWh", "cost") else "left")
        for b in acc.sessions:
            t.add_row(
                b.session_id, b.point_id, b.started_at, b.ended_at,
                f"{b.energy_kwh:.3f}", f"{b.cost:.2f}", b.payment_method,
            )  # fmt: skip
        t.add_row("total", "", "", "", "", f"{acc.total:.2f}", "", style="bold")
        parts.append(t)
    return Group(*parts)


def report_ocpi(accounts: dict[str, Account]) -> str:
    """Every session as an OCPI 2.2.1 CDR (a JSON list, by vehicle then end time)."""
    cdrs = [b.ocpi_cdr() for vid in sorted(accounts) for b in accounts[vid].sessions]
    return json.dumps(cdrs, ensure_ascii=False, indent=2)


def render_report(accounts: dict[str, Account], fmt: str, console: Console) -> None:
    if fmt == "ocpi":
        console.file.write(report_ocpi(accounts) + "\n")
    elif fmt == "json":
        console.file.write(report_json(accounts) + "\n")
    elif fmt == "csv":
        console.file.write(report_csv(accounts))
    else:
        console.print(report_table(accounts))


# --- reconciliation -----------------------------------------------------------------

TIME_TOLERANCE_S: Final = 0.002
ENERGY_TOLERANCE: Final = Decimal("0.001")


@dataclass
class Difference:
    vehicle_id: str
    session_id: str | None
    what: str
    ledger: Any
    broker: Any

    def as_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in self.__dict__.items()}


@dataclass
class Reconciliation:
    differences: list[Difference] = field(default_factory=list)
    vehicles: int = 0
    sessions: int = 0

    @property
    def equal(self) -> bool:
        return not self.differences


def _broker_sessions(raw: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in raw if isinstance(raw, list) else []:
        if isinstance(s, dict) and "session_id" in s:
            out[str(s["session_id"])] = s
    return out


def _same_time(a: str, b: Any) -> bool:
    try:
        return abs(parse_timestamp(a) - parse_timestamp(to_iso(b))) <= TIME_TOLERANCE_S
    except ValueError:
        return False


def _compare_session(vid: str, b: Bill, s: dict[str, Any], diffs: list[Difference]) -> None:
    def diff(what: str, mine: Any, theirs: Any) -> None:
        diffs.append(Difference(vid, b.session_id, what, mine, theirs))

    try:
        cost = to_money(s.get("cost"))
    except ValueError:
        cost = None
    if cost != b.cost:
        diff("cost", f"{b.cost:.2f}", s.get("cost"))
    point = s.get("id_ponto_recarga", s.get("point_id"))
    if point != b.point_id:
        diff("point", b.point_id, point)
    if s.get("payment_method") != b.payment_method:
        diff("payment_method", b.payment_method, s.get("payment_method"))
    try:
        energy = Decimal(str(s.get("energia_kwh", s.get("energy_kwh"))))
        energy_ok = abs(energy - b.energy_kwh) <= ENERGY_TOLERANCE
    except ArithmeticError:
        energy_ok = False
    if not energy_ok:
        diff("energy_kwh", str(b.energy_kwh), s.get("energia_kwh"))
    for what, mine, key in (("start", b.started_at, "inicio"), ("end", b.ended_at, "fim")):
        if key in s and not _same_time(mine, s[key]):
            diff(what, mine, s[key])


def reconcile(ledger: dict[str, Account], broker: dict[str, Any]) -> Reconciliation:
    """Every difference between the ledger's accounts and the broker's ``accounts``."""
    rec = Reconciliation()
    diffs = rec.differences
    for vid in sorted(set(ledger) | set(broker)):
        mine = ledger.get(vid)
        theirs = broker.get(vid) if isinstance(broker.get(vid), dict) else None
        their_sessions = _broker_sessions(theirs.get("sessoes")) if theirs else {}
        my_sessions = {b.session_id: b for b in mine.sessions} if mine else {}
        if not my_sessions and not their_sessions:
            continue  # an account with no session is no bill
        rec.vehicles += 1
        for sid in sorted(set(my_sessions) | set(their_sessions)):
            rec.sessions += 1
            if sid not in their_sessions:
                diffs.append(
                    Difference(vid, sid, "only in ledger", f"{my_sessions[sid].cost:.2f}", None)
                )
            elif sid not in my_sessions:
                diffs.append(
                    Difference(vid, sid, "only at broker", None, their_sessions[sid].get("cost"))
                )
            else:
                _compare_session(vid, my_sessions[sid], their_sessions[sid], diffs)
        my_total = mine.total if mine else Decimal("0.00")
        try:
            their_total: Decimal | None = (
                to_money(theirs.get("total", 0)) if theirs else Decimal("0.00")
            )
        except ValueError:
            their_total = None
        if my_total != their_total:
            diffs.append(
                Difference(vid, None, "total", f"{my_total:.2f}", theirs and theirs.get("total"))
            )
    return rec


async def fetch_accounts(endpoint: Endpoint, client: HistoryClient) -> dict[str, Any]:
    """The broker's ``accounts`` op (one try; raises TransportError)."""
    reply = await client.request_once({"op": "accounts"})
    accounts = reply.get("accounts")
    if not isinstance(accounts, dict):
        raise TransportError(f"history at {endpoint.history_url} gave no accounts map")
    return accounts


def merge_accounts(per_broker: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``accounts`` maps of several brokers (one per region) as one map.

    A vehicle that charged in several regions has one account per broker: its
    sessions are put together and its totals added (in exact cents).
    """
    if len(per_broker) == 1:
        return per_broker[0]
    out: dict[str, Any] = {}
    for accounts in per_broker:
        for vid, acc in accounts.items():
            if not isinstance(acc, dict):
                continue
            mine = out.setdefault(vid, {"vehicle_id": vid, "total": 0.0, "sessoes": []})
            mine.setdefault("moeda", acc.get("moeda"))
            sessions = acc.get("sessoes")
            mine["sessoes"].extend(sessions if isinstance(sessions, list) else [])
            try:
                mine["total"] = float(to_money(mine["total"]) + to_money(acc.get("total", 0)))
            except ValueError:
                mine["total"] = None  # reported as a difference by reconcile
    return out


def render_reconciliation(rec: Reconciliation, fmt: str, console: Console) -> None:
    if fmt == "json":
        console.file.write(
            json.dumps(
                {
                    "equal": rec.equal,
                    "vehicles": rec.vehicles,
                    "sessions": rec.sessions,
                    "differences": [d.as_json() for d in rec.differences],
                },
                ensure_ascii=False,
            )
            + "\n"
        )
        return
    if rec.equal:
        console.print(
            f"ledger equals broker accounts: {rec.vehicles} vehicles, {rec.sessions} sessions"
        )
        return
    t = Table(title=f"{len(rec.differences)} differences")
    for col in ("vehicle", "session", "what", "ledger", "broker"):
        t.add_column(col)
    for d in rec.differences:
        t.add_row(d.vehicle_id, d.session_id or "", d.what, str(d.ledger), str(d.broker))
    console.print(t)
