"""The billing ledger: one row per charging session, and the applied seq.

Money is :class:`decimal.Decimal` in code and integer cents in the database.
Rows are keyed by ``session_id`` and by ``(region, seq)`` (the event that
billed them) and inserted idempotently, and the last applied bus seq is written
in the SAME transaction as the rows, so a crash at any instant neither loses
nor doubles a bill: after a restart the worker resumes from the stored seq (or
its JetStream consumer redelivers) and a replayed event is ignored.

:class:`Ledger` is the embedded SQLite store; :mod:`broker.consumers.billing.ledger_pg` holds
the same tables in PostgreSQL. Both share :class:`LedgerBase` (reports) and
their schema is versioned: :data:`MIGRATIONS` lists each version's steps.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, Self

from common.cdr import CdrPrice, Usage, cdr_to_builtins, cdr_totals, price_session
from common.errors import BusProtocolError, ConfigError, StoreError
from common.events import ChargingCompleted, decode_data
from common.private_files import private_file
from common.tariffs import flat_tariff
from common.timeutil import format_timestamp, parse_timestamp

CENT: Final = Decimal("0.01")
MILLI: Final = Decimal("0.001")
#: ``YYYY-MM-DDTHH:MM:SS.mmmZ``, as :func:`common.timeutil.format_timestamp` writes it
_CANONICAL: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def to_money(value: Any) -> Decimal:
    """A cost from the wire (number or decimal text) as Decimal cents, half-up."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not an amount: {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not an amount: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def to_iso(value: Any) -> str:
    """A timestamp from the wire (epoch seconds or ISO 8601) as ISO 8601 UTC text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_timestamp(float(value))
    if isinstance(value, str):
        if _CANONICAL.fullmatch(value):  # the broker's own form: keep it once it is a date
            try:
                datetime.fromisoformat(value)
                return value
            except ValueError:
                pass
        return format_timestamp(parse_timestamp(value))
    raise ValueError(f"not a timestamp: {value!r}")


@dataclass(frozen=True)
class Bill:
    """One billed charging session (``charging.completed`` data, normalised)."""

    session_id: str
    vehicle_id: str
    point_id: str
    started_at: str
    ended_at: str
    energy_kwh: Decimal
    price_kwh: Decimal
    cost: Decimal
    currency: str
    payment_method: str
    reason: str
    #: the OCPI CDR as JSON text when a tariff priced the session (docs/tariffs.md)
    cdr: str | None = None

    @classmethod
    def from_event(cls, data: ChargingCompleted | Mapping[str, Any]) -> Bill:
        """Normalise ``charging.completed`` data; raises ValueError naming the field."""
        if not isinstance(data, ChargingCompleted):
            try:
                data = decode_data(ChargingCompleted, data)
            except BusProtocolError as exc:
                raise ValueError(exc.message) from None
        for name in ("session_id", "vehicle_id", "point_id"):
            if not getattr(data, name):
                raise ValueError(f"{name}: empty")
        fields: dict[str, Any] = {}
        for name in ("started_at", "ended_at"):
            try:
                fields[name] = to_iso(getattr(data, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from exc
        for name in ("energy_kwh", "price_kwh"):
            value = Decimal(str(getattr(data, name)))
            if not value.is_finite():
                raise ValueError(f"{name}: not a number")
            fields[name] = value
        try:
            cost = to_money(data.cost)
        except ValueError as exc:
            raise ValueError(f"cost: {exc}") from exc
        cdr = None
        if isinstance(data.cdr, dict):
            cdr = json.dumps(data.cdr, separators=(",", ":"), ensure_ascii=False)
        return cls(
            session_id=data.session_id,
            vehicle_id=data.vehicle_id,
            point_id=data.point_id,
            cdr=cdr,
            cost=cost,
            currency=data.currency or "BRL",
            payment_method=data.payment_method,
            reason=data.reason,
            **fields,
        )

    def ocpi_cdr(self) -> dict[str, Any]:
        """The session as an OCPI CDR: the one the broker sent, or (a flat bill) the
        CDR of one ENERGY component at ``price_kwh``, VAT included, whose total is
        ``cost``."""
        if self.cdr is not None:
            out: dict[str, Any] = json.loads(self.cdr)
            return out
        start, end = parse_timestamp(self.started_at), parse_timestamp(self.ended_at)
        tariff = flat_tariff(self.price_kwh, self.currency)
        bill = price_session(tariff, [Usage(start, end, self.energy_kwh)], start, UTC)
        cdr = bill.cdr(
            cdr_id=self.session_id,
            tariff=tariff,
            start=start,
            end=end,
            now=end,
            session_id=self.session_id,
            token=self.vehicle_id,
            remark=self.reason or None,
        )
        cdr.tariff_id = None
        cdr.total_cost = CdrPrice(excl_vat=self.cost, incl_vat=self.cost)
        return cdr_to_builtins(cdr)

    def as_json(self) -> dict[str, Any]:
        """The account-statement shape (``sessoes`` entry of the protocol)."""
        return {
            "session_id": self.session_id,
            "id_ponto_recarga": self.point_id,
            "inicio": self.started_at,
            "fim": self.ended_at,
            "energia_kwh": float(self.energy_kwh.quantize(MILLI, rounding=ROUND_HALF_UP)),
            "cost": float(self.cost),
            "payment_method": self.payment_method,
            **({} if self.cdr is None else {"cdr": cdr_totals(json.loads(self.cdr))}),
        }


@dataclass(frozen=True)
class Account:
    vehicle_id: str
    currency: str
    total: Decimal
    sessions: list[Bill]

    def as_json(self) -> dict[str, Any]:
        return {
            "vehicle_id": self.vehicle_id,
            "moeda": self.currency,
            "total": float(self.total),
            "sessoes": [b.as_json() for b in self.sessions],
        }


@dataclass(frozen=True)
class Entry:
    """A bill with the event that carried it: ``(region, seq)`` is its key."""

    region: str
    seq: int
    bill: Bill
    published_at: float | None = None  # the bus event's ts (for delay figures)


# Versioned schema: each version's statements, in order, for SQLite and PostgreSQL.
# A ledger stores its version in meta.schema_version and runs the missing steps at
# open, each version in its own transaction.
MIGRATIONS: Final[dict[int, dict[str, tuple[str, ...]]]] = {
    1: {
        "sqlite": (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """CREATE TABLE IF NOT EXISTS sessions (
                session_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, vehicle_id TEXT NOT NULL,
                point_id TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT NOT NULL,
                energy_kwh TEXT NOT NULL, price_kwh TEXT NOT NULL, cost_cents INTEGER NOT NULL,
                currency TEXT NOT NULL, payment_method TEXT NOT NULL, reason TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS sessions_vehicle ON sessions (vehicle_id, ended_at)",
        ),
        "postgresql": (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """CREATE TABLE IF NOT EXISTS sessions (
                session_id TEXT PRIMARY KEY, seq BIGINT NOT NULL, vehicle_id TEXT NOT NULL,
                point_id TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT NOT NULL,
                energy_kwh TEXT NOT NULL, price_kwh TEXT NOT NULL, cost_cents BIGINT NOT NULL,
                currency TEXT NOT NULL, payment_method TEXT NOT NULL, reason TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS sessions_vehicle ON sessions (vehicle_id, ended_at)",
        ),
    },
    2: {  # regions: rows keyed by (region, seq); publication and recording times
        "sqlite": (
            "ALTER TABLE sessions ADD COLUMN region TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE sessions ADD COLUMN published_at REAL",
            "ALTER TABLE sessions ADD COLUMN recorded_at REAL",
            "CREATE UNIQUE INDEX sessions_event ON sessions (region, seq)",
        ),
        "postgresql": (
            "ALTER TABLE sessions ADD COLUMN region TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE sessions ADD COLUMN published_at DOUBLE PRECISION",
            "ALTER TABLE sessions ADD COLUMN recorded_at DOUBLE PRECISION",
            "CREATE UNIQUE INDEX sessions_event ON sessions (region, seq)",
        ),
    },
    3: {  # tariffs: the OCPI CDR of a tariffed session (JSON text)
        "sqlite": ("ALTER TABLE sessions ADD COLUMN cdr TEXT",),
        "postgresql": ("ALTER TABLE sessions ADD COLUMN cdr TEXT",),
    },
}
SCHEMA_VERSION: Final = max(MIGRATIONS)

COLUMNS: Final = (
    "session_id, seq, vehicle_id, point_id, started_at, ended_at, energy_kwh, price_kwh, "
    "cost_cents, currency, payment_method, reason, region, published_at, recorded_at, cdr"
)
N_COLUMNS: Final = 16
SELECT: Final = (
    "SELECT session_id, vehicle_id, point_id, started_at, ended_at, energy_kwh, price_kwh, "
    "cost_cents, currency, payment_method, reason, cdr FROM sessions"
)
ORDER_BY: Final = " ORDER BY vehicle_id, ended_at, session_id"


def entry_row(e: Entry, recorded_at: float) -> tuple[Any, ...]:
    """The ``sessions`` row of an entry, in :data:`COLUMNS` order."""
    b = e.bill
    return (
        b.session_id, e.seq, b.vehicle_id, b.point_id, b.started_at, b.ended_at,
        str(b.energy_kwh), str(b.price_kwh), int(b.cost / CENT), b.currency,
        b.payment_method, b.reason, e.region, e.published_at, recorded_at, b.cdr,
    )  # fmt: skip


def bill_from_row(r: Sequence[Any]) -> Bill:
    """A :class:`Bill` from a :data:`SELECT` row."""
    return Bill(
        session_id=r[0],
        vehicle_id=r[1],
        point_id=r[2],
        started_at=r[3],
        ended_at=r[4],
        energy_kwh=Decimal(r[5]),
        price_kwh=Decimal(r[6]),
        cost=Decimal(r[7]) * CENT,
        currency=r[8],
        payment_method=r[9],
        reason=r[10],
        cdr=r[11],
    )


def group_accounts(bills: Iterable[Bill]) -> dict[str, Account]:
    """Per-vehicle totals and session lines, as the broker's accounts op shows them."""
    grouped: dict[str, list[Bill]] = {}
    for b in bills:
        grouped.setdefault(b.vehicle_id, []).append(b)
    return {
        vid: Account(vid, bills[0].currency, sum((b.cost for b in bills), Decimal("0.00")), bills)
        for vid, bills in grouped.items()
    }


class LedgerBase:
    """What every ledger offers; subclasses implement :meth:`write` and :meth:`bills`."""

    location = ""

    @property
    def last_seq(self) -> int:
        raise NotImplementedError

    def write(self, entries: Sequence[Entry], applied_seq: int | None = None) -> int:
        """Insert new entries (and store ``applied_seq``) in one transaction; returns how
        many were new (a known session or (region, seq) is ignored)."""
        raise NotImplementedError

    def bills(self, vehicle_id: str | None = None) -> list[Bill]:
        raise NotImplementedError

    def delays(self) -> list[float]:
        """Seconds from publication on the bus to the ledger row, per recorded session."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def apply(self, bills: Iterable[tuple[int, Bill]], applied_seq: int) -> int:
        """Bills of the local bus (region ``""``) up to ``applied_seq``; see :meth:`write`.

        The stored seq never goes backwards.
        """
        return self.write([Entry("", seq, b) for seq, b in bills], applied_seq)

    def accounts(self, vehicle_id: str | None = None) -> dict[str, Account]:
        """Per-vehicle totals and session lines, as the broker's accounts op shows them."""
        return group_accounts(self.bills(vehicle_id))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Ledger(LedgerBase):
    """The billing worker's own SQLite store (the embedded default)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = str(path)
        self.location = self.path
        if self.path != ":memory:":
            p = Path(self.path)
            if not create and not p.exists():
                raise ConfigError(f"no ledger at {self.path}")
            try:
                private_file(p)  # every bill: 0600 (and its -wal/-shm) in a 0700 folder
            except OSError as exc:
                raise ConfigError(f"cannot create {self.path}: {exc}") from exc
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use ledger {self.path}: {exc}") from exc

    def _version(self) -> int:
        has_meta = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return 0
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        version = self._version()
        if version > SCHEMA_VERSION:
            raise StoreError(f"ledger {self.path} has a newer schema ({version})")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            with self._tx() as db:
                if self._version() >= v:  # another process migrated meanwhile
                    continue
                for stmt in MIGRATIONS[v]["sqlite"]:
                    db.execute(stmt)
                db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (str(v),),
                )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def last_seq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        return int(row[0]) if row else 0

    def write(self, entries: Sequence[Entry], applied_seq: int | None = None) -> int:
        added = 0
        now = time.time()
        sql = (
            f"INSERT INTO sessions ({COLUMNS}) VALUES ({','.join('?' * N_COLUMNS)}) "
            "ON CONFLICT DO NOTHING"
        )
        try:
            with self._tx() as db:
                for e in entries:
                    added += db.execute(sql, entry_row(e, now)).rowcount
                if applied_seq is not None:
                    db.execute(
                        "INSERT INTO meta VALUES ('last_seq', ?) ON CONFLICT(key) DO UPDATE "
                        "SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                        (str(applied_seq),),
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"ledger write failed: {exc}") from exc
        return added

    def bills(self, vehicle_id: str | None = None) -> list[Bill]:
        if vehicle_id is None:
            rows = self._db.execute(SELECT + ORDER_BY)
        else:
            rows = self._db.execute(SELECT + " WHERE vehicle_id = ?" + ORDER_BY, (vehicle_id,))
        return [bill_from_row(r) for r in rows]

    def delays(self) -> list[float]:
        rows = self._db.execute(
            "SELECT recorded_at - published_at FROM sessions WHERE published_at IS NOT NULL"
        )
        return [float(r[0]) for r in rows]
