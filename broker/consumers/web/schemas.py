"""Shapes of the web console's HTTP API, as msgspec structs.

Litestar validates request bodies into these and encodes responses from
them directly, and builds ``/api/openapi.json`` from the same definitions.
Field names follow the bus and the vehicle protocol where a concept already
has a name there (``estado``, ``fora_de_servico``, ``queue_size``).
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, Struct


class PointOut(Struct, kw_only=True):
    """A point as the console shows it."""

    id: str
    latitude: float
    longitude: float
    estado: str
    online: bool
    fora_de_servico: bool
    reason: str | None
    queue: list[str]
    queue_size: int
    vehicle_id: str | None
    session_id: str | None
    potencia_kw: float | None
    preco_kwh: float | None
    last_heard: str | None
    #: the point's tariff view (docs/tariffs.md), None when priced by preco_kwh
    tarifa: dict[str, Any] | None = None


class SessionOut(Struct, kw_only=True):
    """A running session (``active``) or a billed one."""

    session_id: str
    vehicle_id: str
    point_id: str
    started_at: str
    active: bool
    energy_kwh: float
    price_kwh: float | None = None
    payment_method: str | None = None
    ended_at: str | None = None
    cost: float | None = None
    currency: str | None = None
    reason: str | None = None
    # on a site (docs/energy.md): the power it may draw now; paused when 0
    potencia_kw: float | None = None
    aguardando_energia: bool = False


class BillOut(Struct, kw_only=True):
    """One billed session, the columns of ``ev-broker billing report --format csv``."""

    vehicle_id: str
    session_id: str
    point_id: str
    started_at: str
    ended_at: str
    energy_kwh: float
    price_kwh: float
    cost: float
    currency: str
    payment_method: str
    reason: str


class Utilisation(Struct, kw_only=True):
    point_id: str
    charging_s: float
    share: float


class StatsPeriod(Struct, kw_only=True):
    since: str
    sessions: int
    energy_kwh: float
    revenue: float
    sessions_by_reason: dict[str, int]
    utilisation: list[Utilisation]


class Stats(Struct, kw_only=True):
    today: StatsPeriod
    all_time: StatsPeriod
    sessions_active: int
    points: int
    points_online: int
    points_out_of_service: int
    seq: int


class EventOut(Struct, kw_only=True):
    """A bus event as published (``seq``, ``ts``, ``topic``, ``data``)."""

    seq: int
    ts: float
    topic: str
    data: dict[str, Any]


class SiteSessionOut(Struct, kw_only=True):
    session_id: str
    point_id: str
    kw: float
    drawn_kw: float | None = None


class SiteOut(Struct, kw_only=True):
    """A site: its limit, the power allocated to its sessions and what they draw."""

    name: str
    limit_kw: float
    min_kw: float
    points: list[str]
    allocated_kw: float
    drawn_kw: float | None
    sessions: list[SiteSessionOut]


class ConsoleView(Struct, kw_only=True):
    """Everything the page needs at load, consistent as of ``seq``."""

    seq: int
    points: list[PointOut]
    sessions: list[SessionOut]
    stats: Stats
    latest: list[EventOut]
    tiles: str
    sites: list[SiteOut] = []


class AvailabilityIn(Struct, kw_only=True, forbid_unknown_fields=False):
    """Body of ``POST /api/points/{id}/availability``."""

    available: bool
    reason: Annotated[str, Meta(max_length=200)] = ""


class AvailabilityOut(Struct, kw_only=True):
    ok: bool
    seq: int
    point_id: str
    available: bool


class Problem(Struct, kw_only=True):
    """An error body: ``{"error": message}``."""

    error: str
