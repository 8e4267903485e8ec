"""Who may speak to the running broker: live credentials, ZAP, rejection reports.

* :class:`Keyring` is the broker's view of the live credentials, re-read from
  the credential table every second (:meth:`Keyring.refresh`), so ``credentials
  add`` and ``credentials revoke`` take effect without a restart.
* :class:`Authenticator` is pyzmq's asyncio ZAP handler with a credentials
  callback: a CURVE handshake on a socket whose ``ZAP_DOMAIN`` is
  ``stations`` is admitted only for a live ``station`` key, on ``consumers``
  only for a live ``consumer`` or ``operator`` key. The ZAP user id of an
  admitted peer is the credential's name, so every message it sends carries
  that name as its ``User-Id`` property and the edges check it per message
  (a revoked credential is refused within a second even on an open connection).
* :class:`Rejections` counts every refused input in
  ``evcharge_rejected_total{edge,reason}`` and logs at most one line a second
  per reason (the lines in between are counted in the next one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from broker.credentials import CredentialRecord, CredentialTable
from broker.metrics import Counter
from common.errors import StoreError

log = logging.getLogger(__name__)

STATIONS_DOMAIN: Final = "stations"
CONSUMERS_DOMAIN: Final = "consumers"
GATEWAYS_DOMAIN: Final = "gateways"
#: a vehicle gateway reads the bus and history (its replica) like a consumer
DOMAIN_ROLES: Final = {
    STATIONS_DOMAIN: ("station",),
    CONSUMERS_DOMAIN: ("consumer", "operator", "gateway"),
    GATEWAYS_DOMAIN: ("gateway",),
}
DOMAIN_EDGE: Final = {
    STATIONS_DOMAIN: "stations",
    CONSUMERS_DOMAIN: "consumers",
    GATEWAYS_DOMAIN: "gateways",
}
REFRESH_S: Final = 1.0
LOG_EVERY_S: Final = 1.0


class Rejections:
    """``evcharge_rejected_total{edge,reason}`` plus at most one log line a second per reason."""

    def __init__(self, counter: Counter, every_s: float = LOG_EVERY_S) -> None:
        self.counter = counter
        self.every_s = every_s
        self._last: dict[tuple[str, str], float] = {}
        self._since: dict[tuple[str, str], int] = {}

    def __call__(self, edge: str, reason: str, detail: str = "") -> None:
        self.counter.inc(edge, reason)
        key = (edge, reason)
        self._since[key] = self._since.get(key, 0) + 1
        now = time.monotonic()
        if now - self._last.get(key, float("-inf")) < self.every_s:
            return
        count = self._since.pop(key)
        self._last[key] = now
        more = f" ({count - 1} more since the last report)" if count > 1 else ""
        log.warning("rejected on %s: %s%s%s", edge, reason, f": {detail}" if detail else "", more)


class Keyring:
    """The live credentials, by name and by CURVE public key (refreshed from the table)."""

    def __init__(self, table: CredentialTable) -> None:
        self.table = table
        self.by_name: dict[str, CredentialRecord] = {}
        self.by_public: dict[str, CredentialRecord] = {}
        self.legacy: list[CredentialRecord] = []
        self._fingerprint: tuple[int, float, int] | None = None
        self._on_change: list[Callable[[set[str]], None]] = []
        self._task: asyncio.Task[None] | None = None
        self.refresh()

    def on_change(self, callback: Callable[[set[str]], None]) -> None:
        """Call ``callback(names that stopped being live)`` after every change."""
        self._on_change.append(callback)

    def refresh(self) -> bool:
        """Re-read the table when it changed; True when it did."""
        fingerprint = self.table.fingerprint()
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        records = [r for r in self.table.records() if r.live]
        gone = set(self.by_name) - {r.name for r in records}
        self.by_name = {r.name: r for r in records}
        self.by_public = {r.curve_public: r for r in records}
        self.legacy = [r for r in records if r.role == "legacy-station"]
        log.info("credentials: %d live", len(records))
        for callback in self._on_change:
            try:
                callback(gone)
            except Exception:
                log.exception("credential change callback failed")
        return True

    def station(self, name: str | None) -> CredentialRecord | None:
        """The live ``station`` credential called ``name``."""
        rec = self.by_name.get(name) if name else None
        return rec if rec is not None and rec.role == "station" else None

    def consumer(self, name: str | None) -> CredentialRecord | None:
        """The live ``consumer``, ``operator`` or ``gateway`` credential called ``name``."""
        rec = self.by_name.get(name) if name else None
        return rec if rec is not None and rec.role in DOMAIN_ROLES[CONSUMERS_DOMAIN] else None

    def gateway(self, name: str | None) -> CredentialRecord | None:
        """The live ``gateway`` credential called ``name``."""
        rec = self.by_name.get(name) if name else None
        return rec if rec is not None and rec.role == "gateway" else None

    def legacy_covers(self, point_id: str, source: str) -> bool:
        """Whether a live ``legacy-station`` credential covers ``point_id`` from ``source``."""
        return any(r.source == source and r.covers(point_id) for r in self.legacy)

    def admits(self, domain: str, public_z85: str) -> CredentialRecord | None:
        rec = self.by_public.get(public_z85)
        if rec is None or rec.role not in DOMAIN_ROLES.get(domain, ()):
            return None
        return rec

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                self.refresh()
            except StoreError as exc:
                log.error("cannot re-read the credentials: %s", exc.message)
            except Exception:
                log.exception("cannot re-read the credentials")

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop(), name="credentials-refresh")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.table.close()


class _Provider:
    """pyzmq's credentials-provider interface: ``callback(domain, z85 key) -> bool``."""

    def __init__(self, keyring: Keyring, reject: Rejections) -> None:
        self.keyring = keyring
        self.reject = reject

    def callback(self, domain: str, key: bytes) -> bool:
        text = key.decode("ascii", "replace")
        if self.keyring.admits(domain, text) is not None:
            return True
        known = self.keyring.by_public.get(text)
        reason = "unknown_key" if known is None else "wrong_role"
        self.reject(DOMAIN_EDGE.get(domain, domain), reason, f"CURVE key {text[:8]}...")
        return False


class Authenticator(AsyncioAuthenticator):
    """pyzmq's asyncio ZAP handler admitting live credentials; user id = credential name."""

    def __init__(self, ctx: zmq.asyncio.Context, keyring: Keyring, reject: Rejections) -> None:
        super().__init__(ctx, log=logging.getLogger("broker.zap"))
        self.keyring = keyring
        provider = _Provider(keyring, reject)
        for domain in DOMAIN_ROLES:
            self.configure_curve_callback(domain, credentials_provider=provider)

    def curve_user_id(self, client_public_key: bytes) -> str:
        rec = self.keyring.by_public.get(z85.encode(client_public_key).decode("ascii"))
        return rec.name if rec is not None else ""


def curve_server_options(secret_z85: str, domain: str) -> dict[int, int | bytes]:
    """Socket options that make a socket a CURVE server checked by ZAP in ``domain``."""
    return {
        zmq.CURVE_SERVER: 1,
        zmq.CURVE_SECRETKEY: secret_z85.encode("ascii"),
        zmq.ZAP_DOMAIN: domain.encode("ascii"),
    }


class Security:
    """What a secured edge needs: the live credentials, the broker's key and the reporter."""

    def __init__(self, keyring: Keyring, broker_secret: str, reject: Rejections) -> None:
        self.keyring = keyring
        self.broker_secret = broker_secret
        self.reject = reject

    def server_options(self, domain: str) -> dict[int, int | bytes]:
        return curve_server_options(self.broker_secret, domain)
