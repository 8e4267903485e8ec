"""Operators' site changes (energy.md): over the history socket to a running
broker, or straight into the database of a stopped one.

Both paths go through the core's own checks (:meth:`broker.core.Core.set_site`),
so a refusal reads the same and nothing is stored. A change made offline is
written with its ``site.updated`` event (the next seq), as the broker would.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import zmq.asyncio

from broker.app import new_id
from broker.consumers.subscriber import Endpoint, HistoryClient
from broker.core import Core, CoreConfig
from broker.core.effects import Persist, Publish
from broker.store import Store
from common.errors import HistoryRefused, SiteRefused

TIMEOUT_S: Final = 5.0


async def _ask(endpoint: Endpoint, request: dict[str, Any]) -> dict[str, Any]:
    ctx = zmq.asyncio.Context()
    client = HistoryClient(
        ctx, endpoint.history_url, timeout_s=TIMEOUT_S, credential=endpoint.credential
    )
    try:
        return await client.request_once(request)
    finally:
        client.close()
        ctx.term()


def online(endpoint: Endpoint, request: dict[str, Any]) -> dict[str, Any]:
    """Send one sites request to a running broker; its reply.

    Raises :class:`SiteRefused` with the broker's words when it refuses, and
    :class:`TransportError` when it does not answer.
    """
    try:
        return asyncio.run(_ask(endpoint, request))
    except HistoryRefused as exc:
        raise SiteRefused(exc.reason) from None


def offline(db: str, request: dict[str, Any], by: str = "ev-broker sites") -> dict[str, Any]:
    """Apply one sites request to the database of a stopped broker (StoreError if it
    runs: the database is locked); SiteRefused when the core refuses it."""
    with Store(db) as store:
        records, last_seq = store.load()
        core = Core(CoreConfig(), new_id)
        now = time.time()
        core.restore(records, last_seq, now)
        op = request["op"]
        if op == "sites":
            return core.sites()
        if op == "set_site":
            reply, fx = core.set_site(
                request.get("name"),
                request.get("limit_kw"),
                request.get("points"),
                request.get("min_kw"),
                by,
                now,
            )
        else:
            reply, fx = core.remove_site(request.get("name"), by, now)
        store.write(
            [e for e in fx if isinstance(e, Persist)],
            [e.event for e in fx if isinstance(e, Publish)],
        )
        return reply


def render(sites: list[dict[str, Any]]) -> list[str]:
    """``sites list`` as lines of text."""
    if not sites:
        return ["no sites"]
    lines = [
        f"{'SITE':<16} {'LIMIT kW':>9} {'MIN kW':>7} {'ALLOC kW':>9} {'DRAWN kW':>9} "
        f"{'SESSIONS':>8}  POINTS"
    ]
    for s in sites:
        paused = sum(1 for x in s.get("sessions", []) if x.get("state") != "running")
        count = f"{len(s.get('sessions', []))}" + (f" ({paused} paused)" if paused else "")
        lines.append(
            f"{s['name']:<16} {s['limit_kw']:>9g} {s['min_kw']:>7g} {s.get('allocated_kw', 0):>9g} "
            f"{s.get('drawn_kw', 0):>9g} {count:>8}  {' '.join(s['points'])}"
        )
        for x in s.get("sessions", []):
            lines.append(
                f"  {x['point_id']:<14} {x['session_id']:<24} {x['kw']:>7g} kW  "
                f"drawn {x.get('drawn_kw', 0):g} kW  {x.get('state', '')}"
            )
    return lines
