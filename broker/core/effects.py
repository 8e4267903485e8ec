"""Effects: what the pure core asks its edges to do.

Every core entry point returns a list of these, in order. The adapter
(broker.app) carries them out: it first writes every :class:`Persist` and
:class:`Publish` of a loop turn to the store and commits, and only then sends
replies, pushes, bus messages and station commands, so that nothing is
confirmed before it is durable. A batch with neither (see :func:`needs_commit`)
may go out at once.

Effects are plain slotted dataclasses, not frozen ones: nothing changes an effect
after the core made it, and a frozen dataclass costs four times as much to build
(``object.__setattr__`` per field), on the path of every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from msgspec import UnsetType

from common.errors import StationInputRefused
from common.messages import BrokerToStation, BusEvent, Scalar
from common.replies import PushData, ReplyData

RequestId = UnsetType | Scalar


@dataclass(slots=True)
class Reply:
    """The answer to one vehicle request on connection ``conn``.

    Serialised as ``{"type": type, "data": data}`` plus ``"id": request_id``
    when the request carried an id (``request_id`` is not ``UNSET``). ``data`` is
    a payload struct of :mod:`common.replies`, or the encoded point list of
    ``bateria``/``consulta`` (``msgspec.Raw`` of cached ``PointView`` bytes).
    """

    conn: int
    request_id: RequestId
    type: str
    data: ReplyData
    truncated: bool = False  # a list cut at MAX_LIMIT: ``"truncated": true`` ends the envelope


@dataclass(slots=True)
class Push:
    """An unsolicited message to the connection most recently bound to ``vehicle_id``.

    Not queued when the vehicle is not connected.
    """

    vehicle_id: str
    type: str
    data: PushData


@dataclass(slots=True)
class Publish:
    """A bus event; ``event.seq`` is already assigned, gap-free, by the core."""

    event: BusEvent


@dataclass(slots=True)
class SendStation:
    """A message for the station DEALER whose routing id is ``point_id``."""

    point_id: str
    message: BrokerToStation


#: ``energy``: what the sites make of station reports (docs/energy.md), never a refusal
#: of the datagram itself
RejectingEdge = Literal["stations", "status", "energy"]


@dataclass(slots=True)
class Rejected:
    """Input the core refused (dropped, never persisted): counted and logged by the service.

    ``edge`` is where it came from; ``error`` says why, as an error of the
    :class:`common.errors.StationInputRefused` family: its ``code`` is the
    ``reason`` of ``evcharge_rejected_total{edge,reason}``, its message the
    ``detail`` logged.
    """

    edge: RejectingEdge
    error: StationInputRefused

    @property
    def reason(self) -> str:
        return self.error.code

    @property
    def detail(self) -> str:
        return self.error.message


PersistTable = Literal["point", "reservation", "session", "meta", "vehicle", "reply", "tariff"]


@dataclass(slots=True)
class Persist:
    """Upsert (``value`` a dict) or delete (``value`` None) one record of the store."""

    table: PersistTable
    key: str
    value: dict[str, Any] | None


Effect = Reply | Push | Publish | SendStation | Persist | Rejected


def needs_commit(effects: list[Effect]) -> bool:
    """Whether the batch changes anything durable (a :class:`Persist` or a :class:`Publish`).

    A batch that does not (the answer to a query, a refusal) confirms nothing, so
    the service may carry it out at once instead of after the next commit, as long
    as no earlier batch is still waiting for its commit.
    """
    for effect in effects:  # noqa: SIM110 - a loop: no generator built per request
        if isinstance(effect, _DURABLE):
            return True
    return False


_DURABLE = (Persist, Publish)  # a tuple: ``A | B`` would build a union on every call
