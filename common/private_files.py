"""Files that hold secrets at rest: created 0600, in folders created 0700.

The broker's database holds every credential's HMAC key, and the ledger every bill:
another Unix user of the machine must not read them. SQLite creates a database's
``-wal`` and ``-shm`` files with the database file's own mode, so creating the
database file 0600 before SQLite opens it keeps all three private.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700
#: The files beside a SQLite database that hold its data too.
SIDE_FILES: Final = ("-wal", "-shm", "-journal")


def private_dir(folder: Path) -> None:
    """Create ``folder`` and any missing parent, each created 0700 (existing ones kept)."""
    missing: list[Path] = []
    cur = folder
    while not cur.exists():
        missing.append(cur)
        if cur.parent == cur:
            break
        cur = cur.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(path, DIR_MODE)  # whatever the umask


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (an existing file is kept).

    Its folder is created 0700 when missing.
    """
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
    finally:
        os.close(fd)


def open_to_others(path: Path) -> bool:
    """Whether ``path`` exists and its group or others may read or write it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return False
    return bool(stat.S_IMODE(mode) & 0o077)


def tighten_database(path: Path) -> list[Path]:
    """Make the database ``path`` and its side files 0600 where others could read them.

    Returns the files changed (empty when everything was private already).
    """
    changed: list[Path] = []
    for candidate in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
        if open_to_others(candidate):
            os.chmod(candidate, FILE_MODE)
            changed.append(candidate)
    return changed
