"""The gateway <-> core protocol: one msgpack frame per message, a tagged struct each.

A gateway's DEALER speaks to the core's ROUTER (``--gateway-port``, CURVE with
a ``gateway`` credential). Gateway to core:

* :class:`Hello` on start and whenever it meets a core it has not greeted (a
  restarted core): its id and every connection bound to a vehicle, so the core
  knows who speaks for which vehicle (and where its pushes go) again.
* :class:`Forward` for every request the gateway does not answer itself; ``rid``
  counts the connection's forwarded requests, so ``(gateway, conn, rid)`` names
  one request for ever (the committed-reply table's key).
* :class:`Closed` when a connection ends; :class:`Battery` when a ``bateria``
  answered by the gateway crosses the low-battery threshold (the core publishes
  ``vehicle.low_battery``); :class:`Beat` every :data:`BEAT_S`; :class:`Bye`
  on a clean stop.

Core to gateway: :class:`Welcome` (the answer to ``Hello`` and to every
``Beat``: the core's boot id, its seq and what the replica must know),
:class:`Answer` (the reply bytes of one forwarded request, the seq a read must
wait for to see it, the connection's identity after it) and :class:`PushTo`
(a push for one connection).
"""

from __future__ import annotations

from typing import Final

import msgspec

#: A gateway beats this often; the core drops one it has not heard for DEAD_S.
BEAT_S: Final = 0.5
DEAD_S: Final = 2.0
#: A gateway takes the core for gone when no Welcome came for this long.
CORE_SILENT_S: Final = 1.5


class Bound(msgspec.Struct, array_like=True, frozen=True):
    """Who a connection speaks for, as the core's gate decided it."""

    vehicle_id: str
    proven: bool
    owns: bool


class Attach(msgspec.Struct, array_like=True, frozen=True):
    """One bound connection of a gateway (in :class:`Hello`)."""

    conn: int
    address: str
    default_id: str
    bound: Bound


class Hello(msgspec.Struct, tag="hello", array_like=True, frozen=True):
    gateway: str
    conns: list[Attach]


class Forward(msgspec.Struct, tag="fwd", array_like=True, frozen=True):
    conn: int
    rid: int
    address: str
    default_id: str
    request: bytes  # the request as JSON (it was decoded and validated by the gateway)


class Closed(msgspec.Struct, tag="closed", array_like=True, frozen=True):
    conn: int


class Battery(msgspec.Struct, tag="battery", array_like=True, frozen=True):
    vehicle_id: str
    level: float
    latitude: float
    longitude: float


class Beat(msgspec.Struct, tag="beat", array_like=True, frozen=True):
    pass


class Bye(msgspec.Struct, tag="bye", array_like=True, frozen=True):
    pass


class Welcome(msgspec.Struct, tag="welcome", array_like=True, frozen=True):
    boot: str
    seq: int
    queue_capacity: int
    low_battery: float
    low_battery_rearm: float
    #: the core does not know this gateway (it restarted, or dropped it as silent): say
    #: hello again with every connection, and resend what is unanswered
    greet: bool = False


class Answer(msgspec.Struct, tag="answer", array_like=True, frozen=True):
    conn: int
    rid: int
    payload: bytes  # the reply line, as the vehicle reads it
    seq: int  # a read after this request waits until the replica applied this seq
    bound: Bound | None
    outcome: str = "ok"  # ``ok`` or the reply's error/refusal code (the gateway's metrics)


class PushTo(msgspec.Struct, tag="push", array_like=True, frozen=True):
    conn: int
    payload: bytes


ToCore = Hello | Forward | Closed | Battery | Beat | Bye
ToGateway = Welcome | Answer | PushTo

_encode = msgspec.msgpack.Encoder().encode
_to_core = msgspec.msgpack.Decoder(ToCore)
_to_gateway = msgspec.msgpack.Decoder(ToGateway)


def encode(message: ToCore | ToGateway) -> bytes:
    return _encode(message)


def decode_to_core(frame: bytes) -> ToCore:
    """A gateway's message; raises ``msgspec.DecodeError``/``ValidationError`` when it is not."""
    return _to_core.decode(frame)


def decode_to_gateway(frame: bytes) -> ToGateway:
    return _to_gateway.decode(frame)
