"""The CPO's OCPI 2.2.1 HTTP interface (Litestar): every response is an OCPI envelope.

Every request but ``/healthz`` needs ``Authorization: Token <base64>``: token
A of a partner added with ``partners add`` (versions, version details and
credentials only) or the token C it was given when it registered. An unknown
or missing token gets HTTP 401 with status 2001; malformed JSON or fields
2001; an unknown Location/EVSE/Connector 404 with 2003; ``X-Request-ID`` and
``X-Correlation-ID`` are echoed (made up when absent).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Final

import msgspec
from litestar import Litestar, Request, Response, delete, get, patch, post, put
from litestar.exceptions import HTTPException

from broker.consumers.ocpi.commands import COMMAND_TIMEOUT_S
from broker.consumers.ocpi.mapping import session_of
from broker.consumers.ocpi.models import (
    COMMANDS,
    VERSION,
    CommandResponse,
    Credentials,
    Token,
    Version,
    VersionDetails,
    encode,
)
from broker.consumers.ocpi.service import OcpiService
from broker.consumers.ocpi.store import Partner
from broker.consumers.ocpi.wire import (
    MAX_BODY,
    OcpiError,
    Status,
    envelope,
    header_tokens,
    in_range,
    page_headers,
    parse_page,
)

JSON: Final = "application/json"
Req = Request[Any, Any, Any]


def _svc(request: Req) -> OcpiService:
    svc: OcpiService = request.app.state.svc
    return svc


def _ids(request: Req) -> dict[str, str]:
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex
    cid = request.headers.get("x-correlation-id") or rid
    return {"X-Request-ID": rid[:64], "X-Correlation-ID": cid[:64]}


def _ok(request: Req, data: Any = None, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        envelope(data, now=time.time()),
        media_type=JSON,
        headers={**_ids(request), **(headers or {})},
    )


def _partner(request: Req, *, registered: bool = True) -> Partner:
    tokens = header_tokens(request.headers.get("authorization"))
    p = _svc(request).store.partner_by_token(tokens) if tokens else None
    if p is None or (registered and p.state != "registered"):
        raise OcpiError(Status.INVALID_PARAMETERS, "unknown or missing token", 401)
    return p


async def _body(request: Req, kind: Any) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise OcpiError(Status.INVALID_PARAMETERS, "body too large", 413)
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise OcpiError(Status.INVALID_PARAMETERS, f"invalid object: {exc}") from None
    except msgspec.DecodeError as exc:
        raise OcpiError(Status.INVALID_PARAMETERS, f"malformed JSON: {exc}") from None


# --- versions and credentials ---------------------------------------------------------


@get("/healthz")
async def healthz(request: Req) -> Response[bytes]:
    svc = _svc(request)
    return Response(
        encode({"status": "ok", "seq": svc.view.state.seq, "evses": len(svc.view.evses)}),
        media_type=JSON,
    )


@get("/ocpi/versions")
async def versions(request: Req) -> Response[bytes]:
    _partner(request, registered=False)
    return _ok(request, [Version(version=VERSION, url=_svc(request).cfg.base)])


@get(f"/ocpi/{VERSION}")
async def version_details(request: Req) -> Response[bytes]:
    _partner(request, registered=False)
    return _ok(request, VersionDetails(version=VERSION, endpoints=_svc(request).endpoints()))


@get(f"/ocpi/{VERSION}/credentials")
async def credentials_get(request: Req) -> Response[bytes]:
    p = _partner(request, registered=False)
    svc = _svc(request)
    # the token they present is the one shown back: we keep only its hash, so echo theirs
    shown = header_tokens(request.headers.get("authorization"))[0]
    del p
    return _ok(request, svc.our_credentials(shown))


@post(f"/ocpi/{VERSION}/credentials", status_code=200)
async def credentials_post(request: Req) -> Response[bytes]:
    p = _partner(request, registered=False)
    body = await _body(request, Credentials)
    return _ok(request, await _svc(request).accept_credentials(p, body, update=False))


@put(f"/ocpi/{VERSION}/credentials")
async def credentials_put(request: Req) -> Response[bytes]:
    p = _partner(request, registered=False)
    body = await _body(request, Credentials)
    return _ok(request, await _svc(request).accept_credentials(p, body, update=True))


@delete(f"/ocpi/{VERSION}/credentials", status_code=200)
async def credentials_delete(request: Req) -> Response[bytes]:
    p = _partner(request, registered=False)
    if p.state != "registered":
        raise OcpiError(Status.CLIENT_ERROR, "not registered", 405)
    _svc(request).unregister(p)
    return _ok(request)


# --- locations and tariffs ------------------------------------------------------------


@get(f"/ocpi/{VERSION}/locations")
async def locations(request: Req) -> Response[bytes]:
    _partner(request)
    view = _svc(request).view
    query = dict(request.query_params)
    page = parse_page(query)
    if page.date_from is None and page.date_to is None:
        ids = view.order
    else:
        ids = [lid for lid in view.order if in_range(page, view.location_updated(lid))]
    chosen = ids[page.offset : page.offset + page.limit]
    data = [view.location(lid) for lid in chosen]
    url = str(request.url).split("?", 1)[0]
    return _ok(request, data, page_headers(url, query, page, len(ids)))


@get(f"/ocpi/{VERSION}/locations/{{location_id:str}}")
async def location(request: Req, location_id: str) -> Response[bytes]:
    _partner(request)
    loc = _svc(request).view.location(location_id)
    if loc is None:
        raise OcpiError(Status.UNKNOWN_LOCATION, f"unknown location {location_id}", 404)
    return _ok(request, loc)


@get(f"/ocpi/{VERSION}/locations/{{location_id:str}}/{{evse_uid:str}}")
async def evse(request: Req, location_id: str, evse_uid: str) -> Response[bytes]:
    _partner(request)
    found = _svc(request).view.evse(location_id, evse_uid)
    if found is None:
        raise OcpiError(Status.UNKNOWN_LOCATION, f"unknown EVSE {location_id}/{evse_uid}", 404)
    return _ok(request, found)


@get(f"/ocpi/{VERSION}/locations/{{location_id:str}}/{{evse_uid:str}}/{{connector_id:str}}")
async def connector(
    request: Req, location_id: str, evse_uid: str, connector_id: str
) -> Response[bytes]:
    _partner(request)
    found = _svc(request).view.evse(location_id, evse_uid)
    conn = next((c for c in found.connectors if c.id == connector_id), None) if found else None
    if conn is None:
        raise OcpiError(Status.UNKNOWN_LOCATION, "unknown connector", 404)
    return _ok(request, conn)


@get(f"/ocpi/{VERSION}/tariffs")
async def tariffs(request: Req) -> Response[bytes]:
    _partner(request)
    query = dict(request.query_params)
    page = parse_page(query)
    svc = _svc(request)
    view = svc.view
    points = [
        (pid, p.preco_kwh, view.updated.get(pid, 0.0)) for pid, p in view.state.points.items()
    ]
    every = svc.catalog.every(points, time.time())
    url = str(request.url).split("?", 1)[0]
    return _ok(
        request,
        every[page.offset : page.offset + page.limit],
        page_headers(url, query, page, len(every)),
    )


# --- sessions, CDRs -------------------------------------------------------------------


@get(f"/ocpi/{VERSION}/cdrs")
async def cdrs(request: Req) -> Response[bytes]:
    p = _partner(request)
    query = dict(request.query_params)
    page = parse_page(query)
    total, rows = _svc(request).store.cdr_page(
        p.name, page.offset, page.limit, page.date_from, page.date_to
    )
    url = str(request.url).split("?", 1)[0]
    data = [msgspec.Raw(r) for r in rows]
    return _ok(request, data, page_headers(url, query, page, total))


@get(f"/ocpi/{VERSION}/sessions")
async def sessions(request: Req) -> Response[bytes]:
    """The eMSP's drivers' running sessions (completed ones are in ``/cdrs``)."""
    p = _partner(request)
    svc = _svc(request)
    now = time.time()
    out = []
    for r in svc.view.sessions_running():
        d = svc.store.driver(r.vehicle_id)
        if d is not None and d.partner == p.name:
            data = {
                "session_id": r.session_id, "point_id": r.point_id,
                "started_at": r.started_at, "energy_kwh": r.energy_kwh,
            }  # fmt: skip
            out.append(session_of(svc.site, d, data, now=now))
    query = dict(request.query_params)
    page = parse_page(query)
    url = str(request.url).split("?", 1)[0]
    return _ok(
        request,
        out[page.offset : page.offset + page.limit],
        page_headers(url, query, page, len(out)),
    )


# --- commands and tokens --------------------------------------------------------------


@post(f"/ocpi/{VERSION}/commands/{{command:str}}", status_code=200)
async def command(request: Req, command: str) -> Response[bytes]:
    p = _partner(request)
    if command == "UNLOCK_CONNECTOR":  # no charger here can be unlocked remotely
        response = CommandResponse(result="NOT_SUPPORTED", timeout=COMMAND_TIMEOUT_S)
        return _ok(request, response)
    kind = COMMANDS.get(command)
    if kind is None:
        raise OcpiError(Status.INVALID_PARAMETERS, f"unknown command {command}", 404)
    cmd = await _body(request, kind)
    return _ok(request, _svc(request).commander.accept(p, cmd))


@put(f"/ocpi/{VERSION}/tokens/{{country_code:str}}/{{party_id:str}}/{{uid:str}}")
async def token_put(request: Req, country_code: str, party_id: str, uid: str) -> Response[bytes]:
    p = _partner(request)
    tok = await _body(request, Token)
    if (tok.country_code, tok.party_id, tok.uid) != (country_code, party_id, uid):
        raise OcpiError(Status.INVALID_PARAMETERS, "token does not match the URL")
    _svc(request).store.put_tokens(p.name, [msgspec.to_builtins(tok)])
    return _ok(request)


@patch(f"/ocpi/{VERSION}/tokens/{{country_code:str}}/{{party_id:str}}/{{uid:str}}")
async def token_patch(request: Req, country_code: str, party_id: str, uid: str) -> Response[bytes]:
    p = _partner(request)
    svc = _svc(request)
    type_ = request.query_params.get("type") or "RFID"
    known = svc.store.token(uid, type_, p.name)
    if known is None:
        raise OcpiError(Status.UNKNOWN_TOKEN, "unknown token", 404)
    changes = await _body(request, dict[str, Any])
    merged = {**known, **changes}
    try:
        tok = msgspec.convert(merged, Token)
    except msgspec.ValidationError as exc:
        raise OcpiError(Status.INVALID_PARAMETERS, f"invalid token: {exc}") from None
    svc.store.put_tokens(p.name, [msgspec.to_builtins(tok)])
    return _ok(request)


@get(f"/ocpi/{VERSION}/tokens/{{country_code:str}}/{{party_id:str}}/{{uid:str}}")
async def token_get(request: Req, country_code: str, party_id: str, uid: str) -> Response[bytes]:
    p = _partner(request)
    known = _svc(request).store.token(uid, request.query_params.get("type") or "RFID", p.name)
    if known is None:
        raise OcpiError(Status.UNKNOWN_TOKEN, "unknown token", 404)
    return _ok(request, known)


# --- errors ---------------------------------------------------------------------------


def _ocpi_error(request: Req, exc: Exception) -> Response[bytes]:
    if isinstance(exc, OcpiError):
        status, http, msg = exc.status, exc.http, exc.message
    elif isinstance(exc, HTTPException):
        status, http, msg = Status.CLIENT_ERROR, exc.status_code, str(exc.detail)
    else:
        status, http, msg = Status.SERVER_ERROR, 500, type(exc).__name__
    return Response(
        envelope(None, status, msg, now=time.time()),
        media_type=JSON,
        status_code=http,
        headers=_ids(request),
    )


def build(svc: OcpiService) -> Litestar:
    app = Litestar(
        route_handlers=[
            healthz,
            versions,
            version_details,
            credentials_get,
            credentials_post,
            credentials_put,
            credentials_delete,
            locations,
            location,
            evse,
            connector,
            tariffs,
            cdrs,
            sessions,
            command,
            token_put,
            token_patch,
            token_get,
        ],
        exception_handlers={Exception: _ocpi_error},
        openapi_config=None,
        debug=False,
    )
    app.state.svc = svc
    return app
