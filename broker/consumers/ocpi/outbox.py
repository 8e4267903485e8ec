"""Delivery of the push outbox: per eMSP, in order, retried with back-off, never dropped.

Theory of operation
-------------------
Pushes are rows of :class:`broker.consumers.ocpi.store.OcpiStore`'s outbox,
written in the same transaction as whatever caused them. One task per
registered partner takes that partner's rows oldest first; a row is deleted
only once the eMSP answered 2xx with an OCPI status 1xxx (or no body). Up to
``pipeline`` rows to one origin are written at once on one kept-alive
connection (HTTP/1.1 pipelining, :mod:`.http_out`), and the answers come back
in the same order.

When the eMSP cannot be reached, times out or answers 5xx/401/408/429, the
row stays at the head of the queue and is retried after ``initial *
2**attempts`` seconds (at most ``max``), so nothing behind it overtakes it. A
push the eMSP refuses as invalid (HTTP 4xx, or an OCPI 2xxx status) would be
refused forever: it is marked ``failed`` (kept, counted in ``partners list``)
and the queue moves on. When a connection fails half-way through a pipelined
batch, the unanswered rest is sent again: a push may then arrive twice (every
push is an idempotent PUT/PATCH by id, or a CDR POST with its id), and the
last arrival of each is in queue order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Final

from broker.consumers.ocpi.http_out import Client, HttpError, Request, Response, origin
from broker.consumers.ocpi.store import OcpiStore, Partner, Queued
from broker.consumers.ocpi.wire import auth_header

log = logging.getLogger(__name__)

BATCH: Final = 100
PIPELINE: Final = 32  # pushes written ahead of their answers on one connection
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
        pipeline: int = PIPELINE,
    ) -> None:
        self.store = store
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.pipeline = max(1, pipeline)
        self.client = Client(timeout)
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
        await self.client.close()

    async def _drain(self, partner: str) -> None:
        while True:
            try:
                await self._drain_some(partner)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop this partner's pushes for good
                log.exception("outbox of %s", partner)
                await asyncio.sleep(self.backoff_max)

    async def _drain_some(self, partner: str) -> None:
        wake = self._wake[partner]
        while True:
            wake.clear()
            rows = self.store.head(partner, BATCH)
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 1.0)
                continue
            try:
                key = origin(rows[0].url)
            except HttpError as exc:
                self._dead(partner, rows[0], str(exc))
                continue
            run: list[Queued] = []
            for row in rows:
                with contextlib.suppress(HttpError):
                    if origin(row.url) == key and len(run) < self.pipeline:
                        run.append(row)
                        continue
                break
            try:
                responses = await self.client.send([self._request(partner, r) for r in run])
            except HttpError as exc:
                self.store.attempt_failed(run[0], str(exc))
                await self._back_off(run[0])
                continue
            done: list[Queued] = []
            failed: Queued | None = None
            for row, resp in zip(run, responses, strict=False):
                verdict, error = _verdict(resp)
                if verdict == "ok":
                    done.append(row)
                elif verdict == "dead":
                    self._dead(partner, row, error)
                else:
                    self.store.attempt_failed(row, error)
                    failed = row
                    break
            if done:
                self.store.delivered(done)
                self.stats.delivered += len(done)
            if failed is not None:
                await self._back_off(failed)

    async def _back_off(self, row: Queued) -> None:
        self.stats.retries += 1
        await asyncio.sleep(
            min(self.backoff_max, self.backoff_initial * 2 ** min(row.attempts, 20))
        )

    def _dead(self, partner: str, row: Queued, error: str) -> None:
        log.warning("push %s %s refused by %s: %s", row.method, row.url, partner, error)
        self.store.attempt_failed(row, error, dead=True)
        self.stats.failed += 1

    def _request(self, partner: str, row: Queued) -> Request:
        headers = {
            "Authorization": auth_header(self._tokens.get(partner, "")),
            "X-Request-ID": f"out-{row.id}-{row.attempts}",
            "X-Correlation-ID": f"out-{row.id}",
        }
        if row.body is not None:
            headers["Content-Type"] = "application/json"
        return Request(row.method, row.url, headers, row.body)


def _verdict(resp: Response) -> tuple[str, str]:
    """``ok``, ``retry`` (kept at the head) or ``dead`` (refused for good), and why."""
    status = _ocpi_status(resp.body)
    if 200 <= resp.status < 300 and (status is None or 1000 <= status < 2000):
        return "ok", ""
    error = f"HTTP {resp.status} OCPI {status}: {resp.body[:200]!r}"
    if resp.status >= 500 or resp.status in RETRIED_HTTP or (status is not None and status >= 3000):
        return "retry", error
    return "dead", error


def _ocpi_status(body: bytes) -> int | None:
    if not body:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    code = doc.get("status_code") if isinstance(doc, dict) else None
    return code if isinstance(code, int) else None
