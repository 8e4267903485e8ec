"""Delivery of the push outbox: per eMSP, in order, retried with back-off, never dropped.

Theory of operation
-------------------
Pushes are rows of :class:`broker.consumers.ocpi.store.OcpiStore`'s outbox,
written in the same transaction as whatever caused them. One task per
registered partner takes that partner's rows oldest first and sends them one
at a time over a kept-alive HTTP connection; a row is deleted only once the
eMSP answered 2xx with an OCPI status 1xxx (or no body). When the eMSP cannot
be reached, times out or answers 5xx/401/408/429, the row stays at the head of
the queue and is retried after ``initial * 2**attempts`` seconds (at most
``max``), so nothing behind it overtakes it. A push the eMSP refuses as
invalid (HTTP 4xx, or an OCPI 2xxx status) would be refused forever: it is
marked ``failed`` (kept, counted in ``partners list``) and the queue moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Final

import httpx

from broker.consumers.ocpi.store import OcpiStore, Partner, Queued
from broker.consumers.ocpi.wire import auth_header

log = logging.getLogger(__name__)

BATCH: Final = 100
RETRIED_HTTP: Final = frozenset({401, 408, 425, 429})


@dataclass
class OutboxStats:
    delivered: int = 0
    retries: int = 0
    failed: int = 0


class Outbox:
    """Drains the outbox of every registered partner until closed."""

    def __init__(
        self,
        store: OcpiStore,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.client = httpx.AsyncClient(
            timeout=timeout, limits=httpx.Limits(max_keepalive_connections=64)
        )
        self.stats = OutboxStats()
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tokens: dict[str, str] = {}

    def kick(self, partner: str) -> None:
        ev = self._wake.get(partner)
        if ev is not None:
            ev.set()

    def sync(self, partners: list[Partner]) -> None:
        """Start a drainer for each registered partner; stop those removed."""
        live = {p.name: p for p in partners if p.state == "registered" and p.token_out}
        for name, p in live.items():
            self._tokens[name] = p.token_out or ""
            if name not in self._tasks:
                self._wake[name] = asyncio.Event()
                self._tasks[name] = asyncio.create_task(self._drain(name), name=f"ocpi-out-{name}")
        for name in list(self._tasks):
            if name not in live:
                self._tasks.pop(name).cancel()
                self._wake.pop(name, None)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.client.aclose()

    async def _drain(self, partner: str) -> None:
        wake = self._wake[partner]
        while True:
            wake.clear()
            rows = self.store.head(partner, BATCH)
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 1.0)
                continue
            done: list[Queued] = []
            for row in rows:
                verdict = await self._send(partner, row)
                if verdict == "ok":
                    done.append(row)
                    continue
                if done:
                    self.store.delivered(done)
                    self.stats.delivered += len(done)
                    done = []
                if verdict == "dead":
                    self.stats.failed += 1
                    continue
                self.stats.retries += 1
                delay = min(self.backoff_max, self.backoff_initial * 2 ** min(row.attempts, 20))
                await asyncio.sleep(delay)
                break
            if done:
                self.store.delivered(done)
                self.stats.delivered += len(done)

    async def _send(self, partner: str, row: Queued) -> str:
        """``ok``, ``retry`` (row kept at the head) or ``dead`` (marked failed)."""
        headers = {
            "Authorization": auth_header(self._tokens.get(partner, "")),
            "X-Request-ID": f"out-{row.id}-{row.attempts}",
            "X-Correlation-ID": f"out-{row.id}",
        }
        if row.body is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = await self.client.request(row.method, row.url, content=row.body, headers=headers)
        except httpx.HTTPError as exc:
            self.store.attempt_failed(row, f"{type(exc).__name__}: {exc}")
            return "retry"
        status = _ocpi_status(resp.content)
        if 200 <= resp.status_code < 300 and (status is None or 1000 <= status < 2000):
            return "ok"
        error = f"HTTP {resp.status_code} OCPI {status}: {resp.text[:200]}"
        if (
            resp.status_code >= 500
            or resp.status_code in RETRIED_HTTP
            or (status is not None and status >= 3000)
        ):
            self.store.attempt_failed(row, error)
            return "retry"
        log.warning("push %s %s refused by %s: %s", row.method, row.url, partner, error)
        self.store.attempt_failed(row, error, dead=True)
        return "dead"


def _ocpi_status(body: bytes) -> int | None:
    if not body:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    code = doc.get("status_code") if isinstance(doc, dict) else None
    return code if isinstance(code, int) else None
