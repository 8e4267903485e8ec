"""SQLite persistence of the core's records and of the event log.

One file holds the records the core asks to persist (tables ``point``,
``reservation``, ``session``, ``meta``: key -> JSON value), the event log
(``events``: seq, ts, topic, msgpack data) and the schema version
(``PRAGMA user_version``). The app writes each loop turn's records and events
in ONE transaction (:meth:`Store.write`), so a reply confirming a change is
sent only after the change is committed.

Journal mode is WAL with ``synchronous=NORMAL``: a commit is durable against
a process crash (kill -9) because the WAL is written before the commit
returns; only an operating-system crash may lose the last commits. FULL would
fsync on every commit: measured 2.8 ms per commit against 0.1 ms for NORMAL
(docs/protocol.md), which would cap the broker at a few hundred loop turns/s.

A second broker on the same file is refused: :class:`Store` takes an
exclusive ``flock`` on ``<db>.lock`` for as long as it is open.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import msgspec

from broker.core.effects import Persist
from common.errors import EventsPruned, StoreError
from common.messages import BusEvent
from common.private_files import private_dir, private_file, tighten_database

SCHEMA_VERSION: Final = 1
RECORD_TABLES: Final = ("point", "reservation", "session", "meta", "vehicle", "reply", "tariff")
MEMORY: Final = ":memory:"
#: How long a write waits for another process's short write (credentials) to finish.
BUSY_TIMEOUT_MS: Final = 2000

_SCHEMA: Final = [
    *(
        f"CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        for t in RECORD_TABLES
    ),
    "CREATE TABLE IF NOT EXISTS events ("
    " seq INTEGER PRIMARY KEY, ts REAL NOT NULL, topic TEXT NOT NULL, data BLOB NOT NULL)",
]

Record = tuple[str, str, dict[str, Any]]

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder(dict[str, Any]).decode
_mp_encode = msgspec.msgpack.Encoder().encode
_mp_decode = msgspec.msgpack.Decoder(dict[str, Any]).decode


class Store:
    """The broker's database; ``path`` ``":memory:"`` keeps everything in memory."""

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        #: files of an existing database that others could read, made 0600 on opening
        self.tightened: list[Path] = []
        try:
            self._open(synchronous)
        except BaseException:
            self.close()
            raise

    # --- opening ----------------------------------------------------------------------

    def _open(self, synchronous: str) -> None:
        if self.path != MEMORY:
            file = Path(self.path)
            try:
                # secrets at rest (credentials' HMAC keys): 0600 files in 0700 folders;
                # SQLite gives the -wal and -shm files the database file's mode
                private_dir(file.parent)
                self.tightened = tighten_database(file)
                private_file(file)
            except OSError as exc:
                raise StoreError(f"cannot create {self.path} privately: {exc}") from None
            self._take_lock(file)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self._db = db
        try:
            # ``credentials add``/``revoke`` write the credential table beside a running broker
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.path} has schema version {version}, newer than this "
                    f"broker's {SCHEMA_VERSION}; use a newer broker"
                )
            if self.path != MEMORY:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"database {self.path}: cannot use WAL journal ({mode})")
            db.execute(f"PRAGMA synchronous={synchronous}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"database {self.path} is corrupt: {check}")
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"database {self.path} cannot be used: {exc}") from None

    def _take_lock(self, file: Path) -> None:
        lock_path = str(file) + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open lock file {lock_path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"database {self.path} is in use by another running broker (lock {lock_path})"
            ) from None
        self._lock_fd = fd

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    # --- reading ----------------------------------------------------------------------

    def load(self) -> tuple[list[Record], int]:
        """Every persisted record as ``(table, key, value)`` and the last event seq."""
        records: list[Record] = []
        try:
            for table in RECORD_TABLES:
                for key, value in self.db.execute(f"SELECT key, value FROM {table}"):
                    records.append((table, key, _json_decode(value)))
            row = self.db.execute("SELECT MAX(seq) FROM events").fetchone()
        except (sqlite3.DatabaseError, msgspec.DecodeError) as exc:
            raise StoreError(f"database {self.path} cannot be read: {exc}") from None
        return records, int(row[0] or 0)

    def last_seq(self) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def first_seq(self) -> int:
        """The oldest event seq still held (1 when nothing was ever pruned)."""
        row = self.db.execute("SELECT MIN(seq) FROM events").fetchone()
        return int(row[0] or 1)

    def prune_events(self, before_ts: float) -> int:
        """Delete events published before ``before_ts``; the last event is always kept
        (it carries the last seq across restarts). Returns how many were deleted."""
        try:
            cur = self.db.execute(
                "DELETE FROM events WHERE ts < ? AND seq < (SELECT MAX(seq) FROM events)",
                (before_ts,),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: pruning events failed: {exc}") from None
        return int(cur.rowcount)

    def events_since(self, seq: int, limit: int) -> tuple[list[BusEvent], int, bool]:
        """Events with seq > ``seq`` in order (at most ``limit``), the last seq, and more?

        Raises :class:`EventsPruned` when events right after ``seq`` were pruned.
        """
        limit = max(1, limit)
        first = self.first_seq()
        if seq + 1 < first:
            raise EventsPruned(first)
        rows = self.db.execute(
            "SELECT seq, ts, topic, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        events = [BusEvent(s, ts, topic, _mp_decode(data)) for s, ts, topic, data in rows[:limit]]
        return events, self.last_seq(), more

    def count(self, table: str) -> int:
        if table not in (*RECORD_TABLES, "events"):
            raise StoreError(f"no table {table!r}")
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    # --- writing ----------------------------------------------------------------------

    def write(self, records: Iterable[Persist], events: Iterable[BusEvent]) -> None:
        """Apply upserts/deletes and append events in one committed transaction."""
        db = self.db
        try:
            db.execute("BEGIN")
            try:
                for rec in records:
                    if rec.table not in RECORD_TABLES:
                        raise StoreError(f"no record table {rec.table!r}")
                    if rec.value is None:
                        db.execute(f"DELETE FROM {rec.table} WHERE key = ?", (rec.key,))
                    else:
                        db.execute(
                            f"INSERT OR REPLACE INTO {rec.table} (key, value) VALUES (?, ?)",
                            (rec.key, _json_encode(rec.value).decode()),
                        )
                db.executemany(
                    "INSERT INTO events (seq, ts, topic, data) VALUES (?, ?, ?, ?)",
                    [(e.seq, e.ts, e.topic, _mp_encode(e.data)) for e in events],
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: write failed: {exc}") from None

    def close(self) -> None:
        """Close the database (everything written is committed) and release the lock."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
