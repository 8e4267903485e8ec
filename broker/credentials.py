"""The broker's side of credentials: its CURVE key pair and the credential table.

* ``broker.key`` (in the keys folder, mode 0600) holds the broker's CURVE key
  pair in ZeroMQ's certificate format, made on first use by ``serve`` or
  ``credentials add`` (:func:`broker_keys`).
* The ``credential`` table lives in the broker's database (for a ``:memory:``
  broker, in ``credentials.db`` of the keys folder): name, role, point
  pattern, source address, the holder's CURVE public key, the HMAC key, when it
  was issued and when it was revoked. The holder's CURVE secret is never kept:
  it is written once, into the ``.cred`` file.
* :class:`CredentialTable` adds, lists and revokes rows. It works next to a
  running broker (SQLite WAL, a busy timeout); the broker re-reads the table
  every second (:class:`Keyring`), so a change takes effect without a restart.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth

from common.credentials import (
    HMAC_KEY_BYTES,
    POINT_ROLES,
    ROLES,
    check_pattern,
    point_matches,
)
from common.errors import ConfigError, StoreError
from common.private_files import private_file

BROKER_KEY_FILE: Final = "broker.key"
MEMORY_CREDENTIALS_DB: Final = "credentials.db"
BUSY_TIMEOUT_MS: Final = 5000
SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS credential ("
    " name TEXT PRIMARY KEY, role TEXT NOT NULL, points TEXT, source TEXT,"
    " curve_public TEXT NOT NULL, hmac_key TEXT NOT NULL,"
    " issued REAL NOT NULL, revoked REAL)"
)
NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def keys_dir_for(db: str, keys: str | None) -> Path:
    """The keys folder: ``--keys`` when given, else the database's folder."""
    if keys is not None and keys.strip():
        return Path(keys.strip())
    if db == ":memory:":
        raise ConfigError("--db :memory: keeps no credentials: give --keys DIR (or --insecure)")
    return Path(db).parent


def credentials_db_for(db: str, keys_dir: Path) -> str:
    """Where the credential table lives: the broker's database, or the keys folder's file."""
    return str(keys_dir / MEMORY_CREDENTIALS_DB) if db == ":memory:" else db


@dataclass(frozen=True, slots=True)
class BrokerKeys:
    public: str
    secret: str


def broker_keys(keys_dir: Path) -> BrokerKeys:
    """The broker's CURVE key pair from ``keys_dir/broker.key``, made (mode 0600) if missing."""
    path = keys_dir / BROKER_KEY_FILE
    try:
        keys_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the keys folder {keys_dir}: {exc.strerror}") from None
    if not path.exists():
        public, secret = zmq.curve_keypair()
        text = (
            "#   ZeroMQ CURVE certificate of the evcharge broker; keep this file secret\n"
            "metadata\n"
            "curve\n"
            f'    public-key = "{public.decode()}"\n'
            f'    secret-key = "{secret.decode()}"\n'
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made meanwhile by another process: read that one
        except OSError as exc:
            raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
        else:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(text)
    try:
        public_b, secret_b = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the broker key {path}: {exc}") from None
    if secret_b is None:
        raise ConfigError(f"the broker key {path} holds no secret key")
    return BrokerKeys(public_b.decode("ascii"), secret_b.decode("ascii"))


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """One row of the credential table (no secret of the holder)."""

    name: str
    role: str
    points: str | None
    source: str | None
    curve_public: str
    hmac_key: bytes
    issued: float
    revoked: float | None

    @property
    def live(self) -> bool:
        return self.revoked is None

    def covers(self, point_id: str) -> bool:
        return self.points is not None and point_matches(self.points, point_id)

    def listing(self) -> dict[str, Any]:
        """What ``credentials list`` shows (never a secret)."""
        return {
            "name": self.name,
            "role": self.role,
            "points": self.points,
            "source": self.source,
            "curve_public": self.curve_public,
            "issued": self.issued,
            "revoked": self.revoked,
        }


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS:
        raise ConfigError(
            f"invalid credential name {name!r}: 1-64 of A-Z a-z 0-9 _ . - (it names a file)"
        )
    return name


def check_request(role: str, points: str | None, source: str | None) -> None:
    """ConfigError unless ``--points``/``--source`` fit ``role``."""
    if role not in ROLES:
        raise ConfigError(f"invalid role {role!r}: one of {', '.join(ROLES)}")
    if role in POINT_ROLES:
        if points is None:
            raise ConfigError(f"role {role} needs --points (a point id or PREFIX*)")
        check_pattern(points)
    elif points is not None:
        raise ConfigError(f"role {role} takes no --points")
    if role == "legacy-station":
        if source is None:
            raise ConfigError("role legacy-station needs --source IP (its datagrams' address)")
        try:
            ipaddress.ip_address(source)
        except ValueError:
            raise ConfigError(f"invalid --source {source!r}: an IP address") from None
    elif source is not None:
        raise ConfigError(f"role {role} takes no --source (only legacy-station does)")


class CredentialTable:
    """The ``credential`` table of one database file (works beside a running broker)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            if path != ":memory:":
                private_file(Path(path))  # the broker's database: 0600 in a 0700 folder
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.execute(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the credentials of {path}: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> CredentialTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def records(self) -> list[CredentialRecord]:
        try:
            rows = self._db.execute(
                "SELECT name, role, points, source, curve_public, hmac_key, issued, revoked"
                " FROM credential ORDER BY name"
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the credentials of {self.path}: {exc}") from None
        return [
            CredentialRecord(n, r, p, s, cp, base64.b64decode(k), float(i), rv)
            for n, r, p, s, cp, k, i, rv in rows
        ]

    def fingerprint(self) -> tuple[int, float, int]:
        """Changes whenever a credential is added or revoked (cheap, polled every second)."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(MAX(MAX(issued), MAX(COALESCE(revoked, 0))), 0),"
            " COUNT(revoked) FROM credential"
        ).fetchone()
        return int(row[0]), float(row[1]), int(row[2])

    def add(
        self,
        name: str,
        role: str,
        points: str | None,
        source: str | None,
        curve_public: str,
        hmac_key: bytes,
    ) -> CredentialRecord:
        """Record a credential; ConfigError when ``name`` is live (revoked names are reused)."""
        now = time.time()
        key_text = base64.b64encode(hmac_key).decode("ascii")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT revoked FROM credential WHERE name = ?", (name,)
                ).fetchone()
                if row is not None and row[0] is None:
                    raise ConfigError(
                        f"credential {name!r} exists; revoke it first or choose another name"
                    )
                self._db.execute(
                    "INSERT OR REPLACE INTO credential"
                    " (name, role, points, source, curve_public, hmac_key, issued, revoked)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                    (name, role, points, source, curve_public, key_text, now),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record credential {name!r} in {self.path}: {exc}") from None
        return CredentialRecord(name, role, points, source, curve_public, hmac_key, now, None)

    def revoke(self, name: str) -> bool:
        """End a live credential; False when there is no live credential of that name."""
        try:
            cur = self._db.execute(
                "UPDATE credential SET revoked = ? WHERE name = ? AND revoked IS NULL",
                (time.time(), name),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot revoke {name!r} in {self.path}: {exc}") from None
        return cur.rowcount > 0


def issue(
    table: CredentialTable,
    keys: BrokerKeys,
    name: str,
    role: str,
    points: str | None,
    source: str | None,
    out_dir: Path,
) -> Path:
    """Make a credential, record it and write ``out_dir/NAME.cred`` (mode 0600); its path."""
    check_name(name)
    check_request(role, points, source)
    public, secret = zmq.curve_keypair()
    hmac_key = secrets.token_bytes(HMAC_KEY_BYTES)
    path = out_dir / f"{name}.cred"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out_dir}: {exc.strerror}") from None
    body = {
        "name": name,
        "role": role,
        "points": points,
        "curve_public": public.decode("ascii"),
        "curve_secret": secret.decode("ascii"),
        "hmac_key": base64.b64encode(hmac_key).decode("ascii"),
        "broker_public": keys.public,
    }
    tmp = out_dir / f".{name}.cred.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(body, out, indent=2)
            out.write("\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    try:
        table.add(name, role, points, source, public.decode("ascii"), hmac_key)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def ensure(
    table: CredentialTable,
    keys: BrokerKeys,
    name: str,
    role: str,
    points: str | None,
    source: str | None,
    out_dir: Path,
) -> bool:
    """Issue ``name`` unless it is live with its ``.cred`` in ``out_dir``; True when issued.

    A live credential whose file is missing (or that differs in role, points or
    source) is revoked and issued again: a deployment can run this on every start.
    """
    path = out_dir / f"{name}.cred"
    current = next((r for r in table.records() if r.name == name and r.live), None)
    if current is not None:
        same = (current.role, current.points, current.source) == (role, points, source)
        if same and path.exists():
            return False
        table.revoke(name)
    issue(table, keys, name, role, points, source, out_dir)
    return True
