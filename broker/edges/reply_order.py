"""Reply ordering on one vehicle connection: the protocol's rules without the socket.

Rules (docs/protocol.md, "Vehicle connections"):

* Replies are written in request order. Every request takes a :class:`Slot`
  at the tail; its answer fills the slot; filled slots leave from the head.
  A reply that waits (``chegada`` until the station's ack) holds back every
  reply behind it.
* A push is queued behind the replies still outstanding, so a client never
  sees ``sua_vez`` before the ``reserva_response`` that caused it; with
  nothing outstanding it goes out at once.
* A reply produced later than its request's own core call (after the
  station's ack or the ack timeout) fills the oldest *waiting* slot,
  preferring one whose request ``id`` matches (same value and type).
* A slot may close the connection after it is written (``too_large``, a
  decoder failure, the last reply after a half-close); nothing after it is
  written.

:class:`ReplyOrder` holds those rules. It never touches a socket: ``fill`` and
``push`` return the bytes to write now and whether to close after them; the
edge (:mod:`broker.edges.vehicles_tcp`) only moves those bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from broker.core.effects import RequestId


@dataclass(slots=True)
class Slot:
    """The place of one reply in a connection's output order."""

    request_type: str
    request_id: RequestId
    started: float
    payload: bytes | None = None
    waiting: bool = False  # no reply within the request's own core call: a later one fills it
    close_after: bool = False


@dataclass(slots=True)
class Output:
    """What to write now (possibly nothing) and whether to close the connection after it.

    Not frozen (nothing changes it once made): a frozen dataclass costs four times as
    much to build, and one is built for every reply.
    """

    data: bytes = b""
    close: bool = False


NOTHING = Output()


class ReplyOrder:
    """The output order of one connection."""

    __slots__ = ("_closed", "_slots")

    def __init__(self) -> None:
        # a list, not a deque: an empty deque is 760 bytes, an empty list 56, and a
        # connection holds one of these whole life long (mostly empty; a few slots)
        self._slots: list[Slot] = []
        self._closed = False

    def __len__(self) -> int:
        """Slots not written yet (replies outstanding and pushes queued behind them)."""
        return len(self._slots)

    @property
    def closed(self) -> bool:
        """A closing slot was written: nothing more goes out."""
        return self._closed

    def open(
        self, request_type: str, request_id: RequestId, started: float, *, close: bool = False
    ) -> Slot:
        """A new slot at the tail for a request just read."""
        slot = Slot(request_type, request_id, started, close_after=close)
        self._slots.append(slot)
        return slot

    def fill(self, slot: Slot, payload: bytes) -> Output:
        """Give ``slot`` its bytes; returns every filled slot from the head (once)."""
        if slot.payload is not None:
            return NOTHING
        slot.payload = payload
        return self._ready()

    def push(self, payload: bytes) -> Output:
        """An unsolicited message: now if nothing is outstanding, else behind the replies."""
        if self._closed:
            return NOTHING
        if not self._slots:
            return Output(payload)
        self._slots.append(Slot("push", msgspec.UNSET, 0.0, payload=payload))
        return self._ready()

    def take_waiting(self, request_id: RequestId) -> Slot | None:
        """The oldest slot waiting for a later reply (same request id preferred)."""
        first: Slot | None = None
        for slot in self._slots:
            if slot.waiting and slot.payload is None:
                if slot.request_id == request_id and type(slot.request_id) is type(request_id):
                    return slot
                if first is None:
                    first = slot
        return first

    def waiting_for_core(self) -> bool:
        """Some reply is still to come from the core (a start waiting for its ack)."""
        return any(slot.waiting and slot.payload is None for slot in self._slots)

    def close_after_last(self) -> bool:
        """The client half-closed: close once the last outstanding slot is written.

        False when nothing is outstanding (the edge may close at once).
        """
        if not self._slots:
            return False
        self._slots[-1].close_after = True
        return True

    def clear(self) -> None:
        """The connection is gone: forget every slot."""
        self._slots.clear()

    def _ready(self) -> Output:
        slots = self._slots
        if len(slots) == 1 and not slots[0].close_after:  # the common case: one reply
            payload = slots[0].payload
            if payload is None:
                return NOTHING
            slots.pop()
            return Output(payload)
        out: list[bytes] = []
        done = 0
        for slot in slots:
            if slot.payload is None:
                break
            out.append(slot.payload)
            done += 1
            if slot.close_after:
                self._closed = True
                done = len(slots)
                break
        if not out:
            return NOTHING
        del slots[:done]
        return Output(b"".join(out), self._closed)
