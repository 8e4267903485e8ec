"""A consistent copy of a broker database, taken while the broker runs.

SQLite's online backup API copies the database in one step from one read
transaction, so the copy is one consistent state (every committed transaction
up to a point, none half) even while ``ev-broker serve`` keeps committing; the
WAL mode the broker uses lets it go on writing meanwhile. The copy is written
to ``FILE.partial``, checked (``PRAGMA integrity_check``) and then renamed to
``FILE``, so ``FILE`` is either absent or a complete database. Restoring is
starting a broker with ``--db FILE`` (docs/ops.md, "Backup and restore").
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from common.errors import ConfigError, StoreError
from common.private_files import private_file

# One step: the whole copy is made inside one read transaction. In WAL mode the
# broker keeps committing meanwhile; copied in several steps instead, every
# commit between two steps would restart the copy, and a busy broker could keep
# it from ever finishing (measured: docs/ops.md, "Backup and restore").
PAGES_PER_STEP: Final = -1


@dataclass(frozen=True)
class BackupResult:
    """What was copied."""

    path: Path
    bytes: int
    events: int
    last_seq: int


def backup(db: Path, dest: Path, *, overwrite: bool = False) -> BackupResult:
    """Copy the broker database ``db`` to ``dest`` (consistent, checked, atomic)."""
    if not db.is_file():
        raise ConfigError(f"no broker database at {db}")
    if dest.exists() and not overwrite:
        raise ConfigError(f"{dest} exists; give another file or --force")
    if dest.resolve() == db.resolve():
        raise ConfigError("the backup file must not be the database itself")
    partial = dest.with_name(dest.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    try:
        source = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {db}: {exc}") from None
    try:
        try:
            private_file(partial)  # a copy of every secret: 0600 in a 0700 folder
            target = sqlite3.connect(partial)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot write {partial}: {exc}") from None
        try:
            source.backup(target, pages=PAGES_PER_STEP)
            # a copy on its own: no WAL beside it, readable by any sqlite3
            target.execute("PRAGMA journal_mode=DELETE")
            check = target.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"the copy of {db} is not sound: {check}")
            row = target.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM events").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"backup of {db} failed: {exc}") from None
        finally:
            target.close()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    finally:
        source.close()
    os.replace(partial, dest)
    return BackupResult(dest, dest.stat().st_size, int(row[0]), int(row[1]))
