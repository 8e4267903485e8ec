"""The gateway's defences at login and for walk-ins (security contract, second round).

* :class:`LoginGuard`: after :data:`MAX_FAILURES` failed logins from one address
  within :data:`WINDOW_S`, that address gets ``429`` for :data:`BLOCK_S`
  (without any password check: no CPU spent on it). An unknown charger id is
  checked against a dummy hash of the same cost as a real one
  (:meth:`LoginGuard.dummy_check`), so the time of a refusal does not say whether
  the id exists. Refusal log lines are throttled to one a second (the rest
  counted in the next line).
* :class:`IdTags`: the idTags the operator authorized for walk-ins (``[[idtag]]``
  tables in the chargers file: ``id = "RFID042"``). A walk-in is billed to the
  idTag's own account, ``idtag.<tag>`` (:func:`walk_in_account`), never to a
  vehicle id; an idTag not listed is ``Invalid``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import tomllib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from common.errors import ConfigError
from common.messages import WALK_IN_PREFIX
from station.ocpp.passwords import DEFAULT_ITERATIONS, hash_password, verify_password

log = logging.getLogger("station.ocpp")

MAX_FAILURES: Final = 10
WINDOW_S: Final = 60.0
BLOCK_S: Final = 60.0
MAX_TRACKED: Final = 10_000
LOG_EVERY_S: Final = 1.0
#: The account prefix of walk-in sessions: no vehicle may register an id with it.
IDTAG_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,20}$")  # OCPP 1.6 idToken: CiString20


@dataclass(slots=True)
class _Record:
    times: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class LoginGuard:
    """Failed logins per address, the dummy check and the throttled refusal log."""

    def __init__(self, iterations: int = DEFAULT_ITERATIONS) -> None:
        # a hash of a password nobody knows, with the chargers' cost
        self._dummy = hash_password(secrets.token_urlsafe(24), iterations)
        self._records: dict[str, _Record] = {}
        self._last_log = float("-inf")
        self._unlogged = 0
        self.refused = 0
        self.throttled = 0

    def blocked(self, address: str, now: float | None = None) -> bool:
        """Whether ``address`` is in its minute of ``429``."""
        now = time.monotonic() if now is None else now
        record = self._records.get(address)
        if record is not None and record.blocked_until > now:
            self.throttled += 1
            return True
        return False

    def failed(self, address: str, now: float | None = None) -> None:
        """Count one failed login from ``address``."""
        now = time.monotonic() if now is None else now
        record = self._records.get(address)
        if record is None:
            if len(self._records) >= MAX_TRACKED:
                self._sweep(now)
            record = self._records[address] = _Record()
        times = record.times
        times.append(now)
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        if len(times) >= MAX_FAILURES:
            record.blocked_until = now + BLOCK_S
            times.clear()

    async def dummy_check(self, password: str) -> bool:
        """The cost of a real password check, for an id that does not exist (False)."""
        await asyncio.to_thread(verify_password, password, self._dummy)
        return False

    def log_refusal(self, what: str) -> None:
        """One warning a second at most; the others counted in the next one."""
        self.refused += 1
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more refused since the last line)" if self._unlogged else ""
        self._last_log, self._unlogged = now, 0
        log.warning("%s%s", what, more)

    def _sweep(self, now: float) -> None:
        stale = [
            a
            for a, r in self._records.items()
            if r.blocked_until <= now and (not r.times or r.times[-1] <= now - WINDOW_S)
        ]
        for address in stale:
            del self._records[address]


def walk_in_account(id_tag: str) -> str:
    """The account a walk-in with ``id_tag`` is billed to (never a vehicle's id)."""
    return WALK_IN_PREFIX + id_tag


class IdTags:
    """The idTags authorized for walk-ins."""

    def __init__(self, tags: Iterable[str] = ()) -> None:
        self._tags = frozenset(tags)

    def __len__(self) -> int:
        return len(self._tags)

    def account_for(self, id_tag: str) -> str | None:
        """The walk-in account of an authorized ``id_tag``, or None (``Invalid``)."""
        return walk_in_account(id_tag) if id_tag in self._tags else None

    @classmethod
    def load(cls, path: Path) -> IdTags:
        """The ``[[idtag]]`` tables of the chargers file at ``path``."""
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the idTags of {path}: {exc}") from None
        return cls.from_file(raw)

    @classmethod
    def from_file(cls, raw: dict[str, Any]) -> IdTags:
        """The ``[[idtag]]`` tables of a parsed chargers file (none: no walk-ins)."""
        entries = raw.get("idtag", [])
        if not isinstance(entries, list):
            raise ConfigError("idtag: expected [[idtag]] tables")
        tags: list[str] = []
        for n, entry in enumerate(entries, 1):
            tag = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(tag, str) or not IDTAG_RE.match(tag):
                raise ConfigError(f"idtag #{n}: id must be 1-20 characters of A-Z a-z 0-9 _ . -")
            tags.append(tag)
        return cls(tags)
