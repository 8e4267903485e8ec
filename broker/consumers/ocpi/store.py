"""The OCPI process's SQLite store: partners, the push outbox, roaming drivers, CDRs.

* ``partners``: one row per eMSP. ``token_in`` is the SHA-256 of the token the
  eMSP presents to us (token A until it registers, then token C); ``token_out``
  is the token we present to it, kept as given because it must be sent.
* ``outbox``: every push (method, URL, body) in the order made, per partner,
  until the eMSP accepted it. A row whose ``key`` is set (an EVSE's status)
  takes a newer body for the same key while still undelivered (its
  ``version`` goes up, so a delivery in flight does not delete the newer one).
* ``drivers``: eMSP tokens turned into the broker's vehicle ids, with the
  vehicle token the broker issued to that id (when it asks for one).
* ``cdrs`` and ``meta`` (the bus seq applied by the sessions subscriber):
  written in one transaction with the pushes they cause, so each CDR is made
  and queued exactly once, whatever restarts.

The CLI (``partners add|list|remove``) and the running server share the file
(WAL, busy timeout); the server re-reads ``partners`` every second.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from broker.consumers.ocpi.mapping import Driver
from broker.consumers.ocpi.wire import token_hash
from common.errors import StoreError

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS partners (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,             -- pending | register | registered
    token_in TEXT UNIQUE,            -- sha256 of the token they present to us
    token_out TEXT,                  -- the token we present to them
    versions_url TEXT,
    endpoints TEXT NOT NULL DEFAULT '{}',
    country_code TEXT,
    party_id TEXT,
    last_error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    partner TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB,
    key TEXT,
    version INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | failed
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_partner ON outbox (partner, state, id);
CREATE INDEX IF NOT EXISTS outbox_key ON outbox (partner, key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS drivers (
    vehicle_id TEXT PRIMARY KEY,
    partner TEXT NOT NULL,
    country_code TEXT NOT NULL,
    party_id TEXT NOT NULL,
    uid TEXT NOT NULL,
    type TEXT NOT NULL,
    contract_id TEXT NOT NULL,
    auth_method TEXT NOT NULL,
    authorization_reference TEXT,
    vehicle_token TEXT
);
CREATE TABLE IF NOT EXISTS reservations (
    partner TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    vehicle_id TEXT NOT NULL,
    point_id TEXT NOT NULL,
    PRIMARY KEY (partner, reservation_id)
);
CREATE TABLE IF NOT EXISTS tokens (
    country_code TEXT NOT NULL,
    party_id TEXT NOT NULL,
    uid TEXT NOT NULL,
    type TEXT NOT NULL,
    partner TEXT NOT NULL,
    valid INTEGER NOT NULL,
    whitelist TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (country_code, party_id, uid, type)
);
CREATE TABLE IF NOT EXISTS cdrs (
    id TEXT PRIMARY KEY,
    partner TEXT NOT NULL,
    last_updated REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS cdrs_partner ON cdrs (partner, last_updated);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Partner:
    name: str
    state: str
    token_in: str | None
    token_out: str | None
    versions_url: str | None
    endpoints: dict[str, str] = field(default_factory=dict)  # identifier -> URL (RECEIVER)
    country_code: str | None = None
    party_id: str | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Push:
    partner: str
    method: str
    url: str
    body: bytes | None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    id: int
    version: int
    method: str
    url: str
    body: bytes | None
    attempts: int


class OcpiStore:
    """One SQLite connection; every method is short and synchronous."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            folder = Path(self.path).parent
            if not folder.exists():
                folder.mkdir(parents=True, mode=0o700)
        try:
            self.db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open OCPI store {self.path}: {exc}") from exc
        if self.path != ":memory:":
            os.chmod(self.path, 0o600)  # it holds the tokens we present to partners

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> sqlite3.Connection:
        return self.db

    # --- partners -------------------------------------------------------------------

    def add_partner(
        self,
        name: str,
        *,
        token_a: str | None = None,
        url: str | None = None,
        their_token: str | None = None,
    ) -> None:
        """``token_a``: they register with us; ``url`` + ``their_token``: we register with them."""
        now = time.time()
        state = "register" if url else "pending"
        try:
            self.db.execute(
                "INSERT INTO partners (name, state, token_in, token_out, versions_url,"
                " created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, state, token_hash(token_a) if token_a else None, their_token, url, now, now),
            )
        except sqlite3.IntegrityError:
            raise StoreError(f"partner {name!r} exists already") from None

    def remove_partner(self, name: str) -> bool:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            cur = self.db.execute("DELETE FROM partners WHERE name = ?", (name,))
            self.db.execute("DELETE FROM outbox WHERE partner = ?", (name,))
        return cur.rowcount > 0

    _PARTNER: Final = (
        "SELECT name, state, token_in, token_out, versions_url, endpoints, country_code,"
        " party_id, last_error FROM partners"
    )

    def partners(self) -> list[Partner]:
        rows = self.db.execute(self._PARTNER + " ORDER BY name").fetchall()
        return [_partner(r) for r in rows]

    def partner_by_token(self, tokens: Iterable[str]) -> Partner | None:
        """The partner presenting one of ``tokens`` (looked up by hash, never compared)."""
        for tok in tokens:
            r = self.db.execute(self._PARTNER + " WHERE token_in = ?", (token_hash(tok),))
            row = r.fetchone()
            if row is not None:
                return _partner(row)
        return None

    def update_partner(self, name: str, **fields: Any) -> None:
        if "endpoints" in fields:
            fields["endpoints"] = json.dumps(fields["endpoints"])
        fields["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE partners SET {cols} WHERE name = ?", (*fields.values(), name))

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """partner -> (pending, failed) pushes."""
        out: dict[str, tuple[int, int]] = {}
        for partner, state, n in self.db.execute(
            "SELECT partner, state, COUNT(*) FROM outbox GROUP BY partner, state"
        ):
            pending, failed = out.get(partner, (0, 0))
            out[partner] = (pending + n, failed) if state == "pending" else (pending, failed + n)
        return out

    # --- outbox ---------------------------------------------------------------------

    def enqueue(
        self,
        pushes: Sequence[Push],
        *,
        seq: int | None = None,
        cdrs: Sequence[tuple[str, str, float, bytes]] = (),
    ) -> None:
        """Queue ``pushes`` (and store ``cdrs``, and the applied ``seq``) in one transaction."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for p in pushes:
                if p.key is not None:
                    cur = self.db.execute(
                        "UPDATE outbox SET body = ?, version = version + 1, url = ?"
                        " WHERE partner = ? AND key = ? AND state = 'pending'",
                        (p.body, p.url, p.partner, p.key),
                    )
                    if cur.rowcount:
                        continue
                self.db.execute(
                    "INSERT INTO outbox (partner, method, url, body, key, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (p.partner, p.method, p.url, p.body, p.key, now),
                )
            for cdr_id, partner, updated, body in cdrs:
                self.db.execute(
                    "INSERT OR IGNORE INTO cdrs (id, partner, last_updated, body)"
                    " VALUES (?, ?, ?, ?)",
                    (cdr_id, partner, updated, body),
                )
            if seq is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('sessions_seq', ?)",
                    (str(seq),),
                )

    def applied_seq(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'sessions_seq'").fetchone()
        return int(row[0]) if row else 0

    def head(self, partner: str, limit: int = 100) -> list[Queued]:
        rows = self.db.execute(
            "SELECT id, version, method, url, body, attempts FROM outbox"
            " WHERE partner = ? AND state = 'pending' ORDER BY id LIMIT ?",
            (partner, limit),
        ).fetchall()
        return [Queued(*r) for r in rows]

    def delivered(self, rows: Sequence[Queued]) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "DELETE FROM outbox WHERE id = ? AND version = ?", [(r.id, r.version) for r in rows]
            )

    def attempt_failed(self, row: Queued, error: str, *, dead: bool = False) -> None:
        self.db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, state = ? WHERE id = ?",
            (error[:500], "failed" if dead else "pending", row.id),
        )

    # --- drivers, reservations, tokens, CDRs ----------------------------------------

    def put_driver(self, d: Driver) -> None:
        self.db.execute(
            "INSERT INTO drivers (vehicle_id, partner, country_code, party_id, uid, type,"
            " contract_id, auth_method, authorization_reference) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (vehicle_id) DO UPDATE SET partner = excluded.partner,"
            " contract_id = excluded.contract_id, auth_method = excluded.auth_method,"
            " authorization_reference = excluded.authorization_reference",
            (
                d.vehicle_id, d.partner, d.country_code, d.party_id, d.uid, d.type,
                d.contract_id, d.auth_method, d.authorization_reference,
            ),
        )  # fmt: skip

    def driver(self, vehicle_id: str) -> Driver | None:
        r = self.db.execute(
            "SELECT vehicle_id, partner, country_code, party_id, uid, type, contract_id,"
            " auth_method, authorization_reference FROM drivers WHERE vehicle_id = ?",
            (vehicle_id,),
        ).fetchone()
        return Driver(*r) if r else None

    def vehicle_token(self, vehicle_id: str) -> str | None:
        r = self.db.execute(
            "SELECT vehicle_token FROM drivers WHERE vehicle_id = ?", (vehicle_id,)
        ).fetchone()
        return r[0] if r else None

    def keep_vehicle_token(self, vehicle_id: str, token: str) -> None:
        self.db.execute(
            "UPDATE drivers SET vehicle_token = ? WHERE vehicle_id = ?", (token, vehicle_id)
        )

    def put_reservation(self, partner: str, rid: str, vehicle_id: str, point_id: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO reservations VALUES (?, ?, ?, ?)",
            (partner, rid, vehicle_id, point_id),
        )

    def reservation(self, partner: str, rid: str) -> tuple[str, str] | None:
        r = self.db.execute(
            "SELECT vehicle_id, point_id FROM reservations"
            " WHERE partner = ? AND reservation_id = ?",
            (partner, rid),
        ).fetchone()
        return (r[0], r[1]) if r else None

    def drop_reservation(self, partner: str, rid: str) -> None:
        self.db.execute(
            "DELETE FROM reservations WHERE partner = ? AND reservation_id = ?", (partner, rid)
        )

    def put_tokens(self, partner: str, tokens: Sequence[dict[str, Any]]) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for t in tokens:
                self.db.execute(
                    "INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        t["country_code"], t["party_id"], t["uid"], t["type"], partner,
                        1 if t["valid"] else 0, t["whitelist"], json.dumps(t),
                    ),
                )  # fmt: skip

    def token(self, uid: str, type_: str, partner: str) -> dict[str, Any] | None:
        r = self.db.execute(
            "SELECT body FROM tokens WHERE uid = ? AND type = ? AND partner = ?",
            (uid, type_, partner),
        ).fetchone()
        return dict(json.loads(r[0])) if r else None

    def walk_in_token(self, uid: str) -> tuple[str, dict[str, Any]] | None:
        """(partner, token) of a valid cached token a charger may start with by ``uid``
        (its whitelist allows it without asking the eMSP), else None."""
        for partner, body in self.db.execute(
            "SELECT partner, body FROM tokens WHERE uid = ? AND valid = 1"
            " AND whitelist != 'NEVER' ORDER BY type",
            (uid,),
        ):
            return str(partner), dict(json.loads(body))
        return None

    def tokens(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self.db.execute("SELECT body FROM tokens ORDER BY uid")]

    def has_cdr(self, cdr_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM cdrs WHERE id = ?", (cdr_id,)).fetchone() is not None

    def cdr_page(
        self, partner: str, offset: int, limit: int, date_from: float | None, date_to: float | None
    ) -> tuple[int, list[bytes]]:
        where = "partner = ? AND last_updated >= ? AND last_updated < ?"
        args = (partner, date_from if date_from is not None else 0.0, date_to or 1e18)
        total = self.db.execute(f"SELECT COUNT(*) FROM cdrs WHERE {where}", args).fetchone()[0]
        rows = self.db.execute(
            f"SELECT body FROM cdrs WHERE {where} ORDER BY last_updated, id LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return int(total), [r[0] for r in rows]


def _partner(r: Sequence[Any]) -> Partner:
    return Partner(r[0], r[1], r[2], r[3], r[4], json.loads(r[5] or "{}"), r[6], r[7], r[8])
