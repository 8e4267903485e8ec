"""The billing ledger in PostgreSQL: the same tables and migrations as the SQLite one.

Opened with a ``postgresql://`` URL (``--ledger``). Connections come from a
:class:`psycopg_pool.ConnectionPool`; each :meth:`PgLedger.write` is one
transaction (rows + applied seq), so a worker killed at any instant leaves
either the whole batch or none of it. Migrations run under a transaction-level
advisory lock, so several workers starting together migrate once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from broker.consumers.billing.ledger import (
    COLUMNS,
    MIGRATIONS,
    N_COLUMNS,
    ORDER_BY,
    SCHEMA_VERSION,
    SELECT,
    Bill,
    Entry,
    LedgerBase,
    bill_from_row,
    entry_row,
)
from common.errors import LedgerUnavailable, StoreError

MIGRATION_LOCK: Final = 0x65766368  # advisory lock key while migrating ("evch")
POOL_MAX: Final = 4
CONNECT_TIMEOUT_S: Final = 10.0


def redact(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://?"
    host = info.get("host", "")
    port = f":{info['port']}" if info.get("port") else ""
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}{port}/{info.get('dbname', '')}"


class PgLedger(LedgerBase):
    """The ledger in a PostgreSQL database (tables created or migrated at open)."""

    def __init__(self, url: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.location = redact(url)
        try:
            self._pool = ConnectionPool(
                url,
                min_size=1,
                max_size=POOL_MAX,
                open=False,
                kwargs={"autocommit": True},
                name="ledger",
            )
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except (PoolTimeout, psycopg.Error) as exc:
            raise StoreError(f"cannot reach ledger {self.location}: {exc}") from exc
        try:
            self._migrate()
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"cannot use ledger {self.location}: {exc}") from exc

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, args).fetchall()
        except (PoolTimeout, psycopg.Error) as exc:
            raise StoreError(f"ledger {self.location}: {exc}") from exc

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(MIGRATIONS[1]["postgresql"][0])  # meta, to read the version
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(f"ledger {self.location} has a newer schema ({version})")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                with conn.transaction():  # a savepoint per version
                    for stmt in MIGRATIONS[v]["postgresql"]:
                        conn.execute(stmt)
                    conn.execute(
                        "INSERT INTO meta VALUES ('schema_version', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(v),),
                    )

    @property
    def last_seq(self) -> int:
        rows = self._query("SELECT value FROM meta WHERE key='last_seq'")
        return int(rows[0][0]) if rows else 0

    def write(self, entries: Sequence[Entry], applied_seq: int | None = None) -> int:
        now = time.time()
        sql = (
            f"INSERT INTO sessions ({COLUMNS}) VALUES ({','.join(['%s'] * N_COLUMNS)}) "
            "ON CONFLICT DO NOTHING"
        )
        added = 0
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                if entries:  # one pipelined round of inserts
                    cur.executemany(sql, [entry_row(e, now) for e in entries])
                    added = max(0, cur.rowcount)  # the rows inserted, over all of them
                if applied_seq is not None:
                    cur.execute(
                        "INSERT INTO meta VALUES ('last_seq', %s) ON CONFLICT (key) DO UPDATE "
                        "SET value = GREATEST(meta.value::bigint, excluded.value::bigint)::text",
                        (str(applied_seq),),
                    )
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise LedgerUnavailable(f"ledger write failed: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"ledger write failed: {exc}") from exc
        return added

    def bills(self, vehicle_id: str | None = None) -> list[Bill]:
        if vehicle_id is None:
            rows = self._query(SELECT + ORDER_BY)
        else:
            rows = self._query(SELECT + " WHERE vehicle_id = %s" + ORDER_BY, (vehicle_id,))
        return [bill_from_row(r) for r in rows]

    def delays(self) -> list[float]:
        rows = self._query(
            "SELECT recorded_at - published_at FROM sessions WHERE published_at IS NOT NULL"
        )
        return [float(r[0]) for r in rows]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pool.close()
