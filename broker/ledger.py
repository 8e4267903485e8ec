"""The billing ledger: one SQLite row per charging session, and the applied seq.

Money is :class:`decimal.Decimal` in code and integer cents in the database.
Rows are inserted idempotently by ``session_id`` and the last applied bus seq
is written in the SAME transaction as the rows, so a crash at any instant
neither loses nor doubles a bill: after a restart the worker resumes from the
stored seq and a replayed session is ignored.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from common.errors import BusProtocolError, ConfigError, StoreError
from common.events import ChargingCompleted, decode_data
from common.timeutil import format_timestamp, parse_timestamp

SCHEMA_VERSION: Final = 1
CENT: Final = Decimal("0.01")
MILLI: Final = Decimal("0.001")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    session_id     TEXT PRIMARY KEY,
    seq            INTEGER NOT NULL,
    vehicle_id     TEXT NOT NULL,
    point_id       TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    ended_at       TEXT NOT NULL,
    energy_kwh     TEXT NOT NULL,
    price_kwh      TEXT NOT NULL,
    cost_cents     INTEGER NOT NULL,
    currency       TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    reason         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_vehicle ON sessions (vehicle_id, ended_at);
"""


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
        return cls(
            session_id=data.session_id,
            vehicle_id=data.vehicle_id,
            point_id=data.point_id,
            cost=cost,
            currency=data.currency or "BRL",
            payment_method=data.payment_method,
            reason=data.reason,
            **fields,
        )

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


class Ledger:
    """The billing worker's own SQLite store."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            p = Path(self.path)
            if not create and not p.exists():
                raise ConfigError(f"no ledger at {self.path}")
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the folder of {self.path}: {exc}") from exc
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use ledger {self.path}: {exc}") from exc

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"ledger {self.path} has a newer schema ({row[0]})")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def apply(self, bills: Iterable[tuple[int, Bill]], applied_seq: int) -> int:
        """Insert new bills and store ``applied_seq`` in one transaction.

        Returns how many sessions were new (a known session_id is ignored).
        The stored seq never goes backwards.
        """
        added = 0
        try:
            with self._tx() as db:
                for seq, b in bills:
                    cur = db.execute(
                        "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                        "ON CONFLICT(session_id) DO NOTHING",
                        (
                            b.session_id, seq, b.vehicle_id, b.point_id, b.started_at,
                            b.ended_at, str(b.energy_kwh), str(b.price_kwh),
                            int(b.cost / CENT), b.currency, b.payment_method, b.reason,
                        ),
                    )  # fmt: skip
                    added += cur.rowcount
                db.execute(
                    "INSERT INTO meta VALUES ('last_seq', ?) ON CONFLICT(key) DO UPDATE "
                    "SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                    (str(applied_seq),),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"ledger write failed: {exc}") from exc
        return added

    def bills(self, vehicle_id: str | None = None) -> list[Bill]:
        sql = "SELECT * FROM sessions"
        args: tuple[str, ...] = ()
        if vehicle_id is not None:
            sql += " WHERE vehicle_id = ?"
            args = (vehicle_id,)
        rows = self._db.execute(sql + " ORDER BY vehicle_id, ended_at, session_id", args)
        return [
            Bill(
                session_id=r[0],
                vehicle_id=r[2],
                point_id=r[3],
                started_at=r[4],
                ended_at=r[5],
                energy_kwh=Decimal(r[6]),
                price_kwh=Decimal(r[7]),
                cost=Decimal(r[8]) * CENT,
                currency=r[9],
                payment_method=r[10],
                reason=r[11],
            )
            for r in rows
        ]

    def accounts(self, vehicle_id: str | None = None) -> dict[str, Account]:
        """Per-vehicle totals and session lines, as the broker's accounts op shows them."""
        grouped: dict[str, list[Bill]] = {}
        for b in self.bills(vehicle_id):
            grouped.setdefault(b.vehicle_id, []).append(b)
        return {
            vid: Account(
                vid, bills[0].currency, sum((b.cost for b in bills), Decimal("0.00")), bills
            )
            for vid, bills in grouped.items()
        }
