"""The web console's HTTP application (Litestar): the page, the JSON API, the event stream.

Handlers only read :class:`broker.consumers.web.feed.ConsoleFeed` (state, ledger,
streams) or forward an operator request to it; they run on the event loop,
like the feed, so nothing here needs a lock. The token gate
(:mod:`broker.consumers.web.auth`) wraps the whole application, see :func:`build`.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.params import Parameter
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage
from litestar.static_files import create_static_files_router

from broker.consumers.billing.ledger import Account, Bill
from broker.consumers.billing.worker import report_csv
from broker.consumers.web.auth import ASGIApp, TokenGate
from broker.consumers.web.feed import ConsoleFeed, Refused
from broker.consumers.web.guard import BrowserRules, ConnectionGuard
from broker.consumers.web.schemas import (
    AvailabilityIn,
    AvailabilityOut,
    BillOut,
    ConsoleView,
    PointOut,
    SessionOut,
    SiteOut,
    Stats,
)
from common.errors import TransportError
from common.timeutil import format_timestamp, parse_timestamp

STATIC: Final = Path(__file__).parent / "static"
DEFAULT_TILES: Final = ""  # no tile server: markers only, works offline
KEEPALIVE_S: Final = 15.0
RETRY_MS: Final = 1000


def _feed(request: Request[Any, Any, Any]) -> ConsoleFeed:
    feed: ConsoleFeed = request.app.state.feed
    return feed


def _bill_out(b: Bill) -> BillOut:
    return BillOut(
        vehicle_id=b.vehicle_id,
        session_id=b.session_id,
        point_id=b.point_id,
        started_at=b.started_at,
        ended_at=b.ended_at,
        energy_kwh=float(b.energy_kwh),
        price_kwh=float(b.price_kwh),
        cost=float(b.cost),
        currency=b.currency,
        payment_method=b.payment_method,
        reason=b.reason,
    )


# --- page and health ------------------------------------------------------------------


@get("/", media_type=MediaType.HTML, include_in_schema=False)
async def index() -> Response[bytes]:
    body = (STATIC / "index.html").read_bytes()
    return Response(body, media_type=MediaType.HTML, headers={"cache-control": "no-store"})


@get("/healthz", include_in_schema=False)
async def healthz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    feed = _feed(request)
    body = {"status": "ok" if feed.ready else "starting", "seq": feed.state.seq}
    return Response(body, status_code=200 if feed.ready else 503)


@get("/api/console", summary="Everything the page shows, consistent as of seq")
async def console(request: Request[Any, Any, Any]) -> ConsoleView:
    feed = _feed(request)
    st = feed.state
    return ConsoleView(
        seq=st.seq,
        points=st.rows(),
        sessions=st.sessions(),
        stats=st.stats(time.time()),
        latest=list(st.latest),
        tiles=request.app.state.tiles,
        sites=st.site_rows(),
    )


@get("/api/sites", summary="Every site: limit, power allocated and drawn, each session's kW")
async def sites(request: Request[Any, Any, Any]) -> list[SiteOut]:
    return _feed(request).state.site_rows()


# --- points ---------------------------------------------------------------------------


@get("/api/points", summary="Every point: state, queue, who charges, last heard")
async def points(request: Request[Any, Any, Any]) -> list[PointOut]:
    return _feed(request).state.rows()


@get("/api/points/{point_id:str}", summary="One point")
async def point(request: Request[Any, Any, Any], point_id: str) -> PointOut:
    p = _feed(request).state.points.get(point_id)
    if p is None:
        raise HTTPException(status_code=404, detail=f"unknown point {point_id}")
    return p.row()


@post(
    "/api/points/{point_id:str}/availability",
    status_code=200,
    summary="Take a point out of service (available false, with a reason) or put it back",
)
async def availability(
    request: Request[Any, Any, Any], point_id: str, data: AvailabilityIn
) -> AvailabilityOut:
    feed = _feed(request)
    if point_id not in feed.state.points:
        raise HTTPException(status_code=404, detail=f"unknown point {point_id}")
    if not data.available and not data.reason.strip():
        raise HTTPException(status_code=400, detail="reason: required to take a point out")
    try:
        seq = await feed.set_availability(point_id, data.available, data.reason.strip())
    except Refused as exc:  # 403 when this console's credential is not an operator's
        code = 403 if exc.forbidden else 409
        raise HTTPException(status_code=code, detail=exc.message) from exc
    except TransportError as exc:
        raise HTTPException(status_code=503, detail=f"broker unreachable: {exc.message}") from exc
    return AvailabilityOut(ok=True, seq=seq, point_id=point_id, available=data.available)


# --- sessions, bills, stats -----------------------------------------------------------


@get("/api/sessions", summary="Running sessions (active=true), billed ones (false), or both")
async def sessions(
    request: Request[Any, Any, Any],
    active: bool | None = None,
    limit: Annotated[int, Parameter(ge=1, le=100_000)] = 1000,
) -> list[SessionOut]:
    feed = _feed(request)
    out: list[SessionOut] = []
    if active is not False:
        out.extend(feed.state.sessions())
    if active is not True:
        bills = sorted(feed.ledger.bills(), key=lambda b: (b.ended_at, b.session_id))
        for b in reversed(bills[-limit:]):
            out.append(
                SessionOut(
                    session_id=b.session_id,
                    vehicle_id=b.vehicle_id,
                    point_id=b.point_id,
                    started_at=b.started_at,
                    active=False,
                    energy_kwh=float(b.energy_kwh),
                    price_kwh=float(b.price_kwh),
                    payment_method=b.payment_method,
                    ended_at=b.ended_at,
                    cost=float(b.cost),
                    currency=b.currency,
                    reason=b.reason,
                )
            )
    return out


def _since(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise HTTPException(
            status_code=400, detail=f"since: not an ISO 8601 time: {value!r}"
        ) from exc


@get(
    "/api/bills",
    summary="Billed sessions (the billing ledger), as JSON or as the billing report's CSV",
    description="`since` keeps the sessions that ended at or after that time.",
)
async def bills(
    request: Request[Any, Any, Any],
    vehicle: str | None = None,
    since: str | None = None,
    format: Literal["json", "csv"] = "json",
) -> Response[Any]:
    after = _since(since)
    accounts = _feed(request).ledger.accounts(vehicle or None)
    if after is not None:
        cut = format_timestamp(after)
        kept: dict[str, Account] = {}
        for vid, acc in accounts.items():
            lines = [b for b in acc.sessions if b.ended_at >= cut]
            if lines:
                total = sum((b.cost for b in lines), Decimal("0.00"))
                kept[vid] = Account(vid, acc.currency, total, lines)
        accounts = kept
    if format == "csv":
        name = f"bills-{vehicle}.csv" if vehicle else "bills.csv"
        return Response(
            report_csv(accounts).encode(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )
    lines_out = [_bill_out(b) for vid in sorted(accounts) for b in accounts[vid].sessions]
    return Response(msgspec.json.encode(lines_out), media_type=MediaType.JSON)


@get("/api/stats", summary="kWh, revenue, sessions by end reason, utilisation: today, all time")
async def stats(request: Request[Any, Any, Any]) -> Stats:
    return _feed(request).state.stats(time.time())


# --- events ---------------------------------------------------------------------------


def _resume_from(request: Request[Any, Any, Any], since: int | None) -> int | None:
    header = request.headers.get("last-event-id")
    if header:
        try:
            return max(0, int(header))
        except ValueError as exc:
            raise HTTPException(status_code=400, detail="Last-Event-ID: not a seq") from exc
    return since


@get(
    "/api/events",
    summary="Server-Sent Events: one bus event per message, id = seq",
    description=(
        "`Last-Event-ID` (or `since`) resumes after that seq without a gap; without either "
        "the stream starts with the next event. Each message is the bus event "
        "(`seq`, `ts`, `topic`, `data`) plus `point` (the point's new row) and, for "
        "charging events, `sessions` and `stats`. Messages of type `sessions` (no id) "
        "refresh the energy of running sessions."
    ),
)
async def events(
    request: Request[Any, Any, Any],
    since: Annotated[int | None, Parameter(ge=0)] = None,
) -> ServerSentEvent:
    feed = _feed(request)
    after = _resume_from(request, since)

    async def messages() -> Any:
        yield ServerSentEventMessage(comment="evcharge events", retry=RETRY_MS)
        async for item in feed.stream(after):
            if item.seq < 0:
                yield ServerSentEventMessage(data=item.text, event="sessions")
            else:
                yield ServerSentEventMessage(data=item.text, id=item.seq)

    return ServerSentEvent(messages(), headers={"cache-control": "no-store"})


# --- the application ------------------------------------------------------------------


def create_app(feed: ConsoleFeed, *, tiles: str = DEFAULT_TILES) -> Litestar:
    """The Litestar application (without the token gate)."""
    app = Litestar(
        route_handlers=[
            index,
            healthz,
            console,
            points,
            point,
            availability,
            sessions,
            sites,
            bills,
            stats,
            events,
            create_static_files_router(path="/static", directories=[STATIC]),
        ],
        openapi_config=OpenAPIConfig(
            title="evcharge operator console",
            version="1",
            path="/api",
            render_plugins=[JsonRenderPlugin()],
        ),
        debug=False,
        # the process's logging is the command's (one line per record, our format):
        # Litestar's default config would add its own handlers and print every line twice
        logging_config=None,
    )
    app.state.feed = feed
    app.state.tiles = tiles
    return app


def build(
    feed: ConsoleFeed,
    token: str,
    *,
    tiles: str = DEFAULT_TILES,
    allowed_origins: tuple[str, ...] = (),
    guard: ConnectionGuard | None = None,
) -> ASGIApp:
    """The application behind its token gate and the browser rules, ready for uvicorn."""
    gate = TokenGate(
        create_app(feed, tiles=tiles),
        token,
        on_authenticated=guard.authenticated if guard is not None else None,
    )
    return BrowserRules(gate, allowed_origins)
