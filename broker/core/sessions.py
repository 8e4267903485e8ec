"""Charging sessions: the start handshake, energy and money.

Money is ``Decimal`` everywhere inside the core and rounded half-up to cents
once, when a session is billed; floats appear only at the wire edge (JSON
numbers with two decimals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, ClassVar, Final, Literal

import msgspec
from msgspec import UNSET, UnsetType

from broker.core.records import Record
from common.cdr import Usage, cdr_totals
from common.messages import Scalar
from common.replies import SessionView, StatementLine
from common.tariffs import Tariff
from common.timeutil import format_timestamp

CENT: Final = Decimal("0.01")
MILLI: Final = Decimal("0.001")
CURRENCY: Final = "BRL"
PENDING_PREFIX: Final = "start:"
NO_CONNECTION: Final = -1  # requester of a start restored after a crash


def to_decimal(value: float) -> Decimal:
    """The decimal a human reads in ``value`` (``repr``), not its binary expansion."""
    return Decimal(repr(float(value)))


def energy_kwh(nivel_inicial: float, nivel_final: float, capacidade_kwh: float) -> Decimal:
    """``(nivel_final - nivel_inicial) / 100 * capacidade_kwh``, never negative.

    Levels outside 0-100 are clamped; a non-finite value counts as no energy.
    """
    if not all(math.isfinite(v) for v in (nivel_inicial, nivel_final, capacidade_kwh)):
        return Decimal(0)
    nivel_inicial = min(100.0, max(0.0, nivel_inicial))
    nivel_final = min(100.0, max(0.0, nivel_final))
    delta = to_decimal(nivel_final) - to_decimal(nivel_inicial)
    if delta <= 0:
        return Decimal(0)
    return delta / 100 * to_decimal(capacidade_kwh)


#: Real-time chargers (metered, OCPP) may report this much above power x wall time.
REALTIME_MARGIN: Final = Decimal("1.10")
#: A completion's ``nivel_inicial`` may differ from the session's by rounding only.
LEVEL_TOLERANCE: Final = 0.01


def battery_room_kwh(nivel_inicial: float, capacidade_kwh: float) -> Decimal:
    """``capacidade_kwh * (100 - nivel_inicial) / 100``: the most a session can take."""
    if not (math.isfinite(nivel_inicial) and math.isfinite(capacidade_kwh)):
        return Decimal(0)
    level = min(100.0, max(0.0, nivel_inicial))
    return max(Decimal(0), (100 - to_decimal(level)) / 100 * to_decimal(capacidade_kwh))


def energy_bound_kwh(
    nivel_inicial: float,
    capacidade_kwh: float,
    *,
    power_kw: float | None = None,
    wall_s: float | None = None,
) -> Decimal:
    """The most energy a session may be billed for (security contract, second round).

    Always the battery's room from the session's start; for a real-time charger
    (``power_kw`` and ``wall_s`` given) also the charger's power times the session's
    wall-clock time, plus :data:`REALTIME_MARGIN`.
    """
    bound = battery_room_kwh(nivel_inicial, capacidade_kwh)
    if power_kw is not None and wall_s is not None:
        if math.isfinite(power_kw) and math.isfinite(wall_s):
            hours = to_decimal(max(0.0, power_kw)) * to_decimal(max(0.0, wall_s)) / 3600
            bound = min(bound, hours * REALTIME_MARGIN)
        else:
            bound = Decimal(0)
    return bound


def bounded_energy(energy: Decimal, bound: Decimal) -> tuple[Decimal, Decimal]:
    """``(billed, excess)``: ``energy`` cut at ``bound``, and what was cut (never billed)."""
    if energy <= bound:
        return energy, Decimal(0)
    return bound, energy - bound


def session_cost(energy: Decimal, price_kwh: Decimal) -> Decimal:
    """``energy * price`` rounded half-up to cents."""
    return (energy * price_kwh).quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(slots=True, eq=False)
class PendingStart:
    """A ``chegada`` accepted and sent to the station as ``start``, not yet acked."""

    cmd_id: str
    session_id: str
    vehicle_id: str
    point_id: str
    conn: int
    request_id: UnsetType | Scalar
    nivel_bateria: float
    nivel_carregar: float
    capacidade_kwh: float
    payment_method: str
    reservation_id: str | None
    deadline: float

    def record(self) -> dict[str, Any]:
        """Persisted form, so that a start the station acts on survives a broker crash."""
        return {
            "cmd_id": self.cmd_id,
            "session_id": self.session_id,
            "vehicle_id": self.vehicle_id,
            "point_id": self.point_id,
            "nivel_bateria": self.nivel_bateria,
            "nivel_carregar": self.nivel_carregar,
            "capacidade_kwh": self.capacidade_kwh,
            "payment_method": self.payment_method,
            "reservation_id": self.reservation_id,
        }

    @classmethod
    def from_record(cls, v: dict[str, Any], deadline: float) -> PendingStart:
        """A restored start: its requester is gone (``conn`` -1, no request id)."""
        rid = v.get("reservation_id")
        return cls(
            cmd_id=str(v["cmd_id"]),
            session_id=str(v["session_id"]),
            vehicle_id=str(v["vehicle_id"]),
            point_id=str(v["point_id"]),
            conn=NO_CONNECTION,
            request_id=UNSET,
            nivel_bateria=float(v["nivel_bateria"]),
            nivel_carregar=float(v["nivel_carregar"]),
            capacidade_kwh=float(v["capacidade_kwh"]),
            payment_method=str(v["payment_method"]),
            reservation_id=None if rid is None else str(rid),
            deadline=deadline,
        )


def pending_key(session_id: str) -> str:
    """Key of a pending start in the store's ``meta`` table."""
    return PENDING_PREFIX + session_id


class Session(Record, eq=False):
    """A running (``state`` running) or billed session; persisted as it is (decimals
    as text)."""

    NOT_PERSISTED: ClassVar[frozenset[str]] = frozenset({"allowed_kw"})
    #: a session without tariff is persisted exactly as before tariffs existed
    OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset(
        {"tariff", "powers", "charged_at", "cdr"}
    )

    id: str = msgspec.field(name="session_id")
    vehicle_id: str
    point_id: str
    started_at: float
    nivel_inicial: float
    nivel_carregar: float
    capacidade_kwh: float
    payment_method: str
    price_kwh: Decimal
    reservation_id: str | None
    boot_id: str | None
    energy_reported: float = 0.0
    state: Literal["running", "billed"] = "running"
    #: on a site: the power the rule gives it now (kW, 0 paused; never persisted)
    allowed_kw: float | None = None
    # filled when billed
    ended_at: float | None = None
    nivel_final: float | None = None
    energy: Decimal | None = msgspec.field(default=None, name="energy_kwh")
    cost: Decimal | None = None
    reason: str | None = None
    billed_seq: int = 0  # seq of its charging.completed event: the account's order
    #: the tariff the session started with (None: the flat ``price_kwh``)
    tariff: Tariff | None = None
    #: (from, kW): the power allocated from each instant on (tariffed sessions)
    powers: list[tuple[float, float]] | None = None
    #: charging ended at this instant and the vehicle is still plugged in (parking);
    #: ``energy_kwh``, ``nivel_final`` and ``reason`` are then already set
    charged_at: float | None = None
    #: the CDR of a billed tariffed session (plain JSON types)
    cdr: dict[str, Any] | None = None

    @property
    def parks(self) -> bool:
        """True when its tariff prices PARKING_TIME: the bill waits for the unplug."""
        return self.tariff is not None and "PARKING_TIME" in self.tariff.dimensions()

    def set_power(self, power_kw: float, now: float) -> bool:
        """Record that the allocated power is ``power_kw`` from ``now`` on (charging
        periods split there); False when nothing changed or charging already ended."""
        if self.charged_at is not None or self.ended_at is not None:
            return False
        powers = self.powers if self.powers is not None else []
        if powers and powers[-1][1] == power_kw:
            return False
        if powers and powers[-1][0] >= now:
            powers[-1] = (powers[-1][0], power_kw)
        else:
            powers.append((now, power_kw))
        self.powers = powers
        return True

    def usages(self, energy: Decimal, charge_end: float, unplugged: float) -> list[Usage]:
        """The session as stretches for the tariff engine: charging split where the
        power changed (energy shared in proportion to power x time), then parking."""
        marks = [(t, kw) for t, kw in self.powers or () if t < charge_end]
        marks = marks or [(self.started_at, 0.0)]
        stretches = []
        for i, (t, kw) in enumerate(marks):
            a = max(t, self.started_at) if i else self.started_at
            b = marks[i + 1][0] if i + 1 < len(marks) else charge_end
            if b > a:
                stretches.append((a, b, kw))
        if not stretches:
            stretches = [(self.started_at, max(charge_end, self.started_at), marks[-1][1])]
        weights = [Decimal(repr((b - a) * kw)) for a, b, kw in stretches]
        total = sum(weights, Decimal(0))
        if total <= 0:
            weights = [Decimal(repr(b - a)) for a, b, _ in stretches]
            total = sum(weights, Decimal(0))
        out: list[Usage] = []
        given = Decimal(0)
        for i, ((a, b, kw), w) in enumerate(zip(stretches, weights, strict=True)):
            share = (
                energy - given
                if i == len(stretches) - 1
                else (energy * w / total if total > 0 else Decimal(0))
            )
            given += share
            out.append(Usage(a, b, share, True, Decimal(repr(kw))))
        if unplugged > charge_end:
            out.append(Usage(charge_end, unplugged, Decimal(0), False))
        return out

    def view(self) -> SessionView:
        """A running session as shown in snapshots and ``status_veiculo``."""
        return SessionView(
            session_id=self.id,
            vehicle_id=self.vehicle_id,
            id_ponto_recarga=self.point_id,
            inicio=format_timestamp(self.started_at),
            nivel_inicial=self.nivel_inicial,
            nivel_carregar=self.nivel_carregar,
            capacidade_kwh=self.capacidade_kwh,
            preco_kwh=float(self.price_kwh),
            payment_method=self.payment_method,
            energia_kwh=self.energy_reported,
            estado="carregando",
        )

    def statement_line(self) -> StatementLine:
        """One ``sessoes`` entry of the ``extrato`` (billed sessions only)."""
        assert self.ended_at is not None and self.energy is not None and self.cost is not None
        return StatementLine(
            session_id=self.id,
            id_ponto_recarga=self.point_id,
            inicio=format_timestamp(self.started_at),
            fim=format_timestamp(self.ended_at),
            energia_kwh=float(self.energy.quantize(MILLI, rounding=ROUND_HALF_UP)),
            cost=float(self.cost),
            payment_method=self.payment_method,
            cdr=UNSET if self.cdr is None else cdr_totals(self.cdr),
        )
