"""The reply-ordering rules of a vehicle connection, without a socket."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from broker.edges.reply_order import Output, ReplyOrder


def test_replies_leave_in_request_order() -> None:
    order = ReplyOrder()
    first = order.open("chegada", 1, 0.0)
    second = order.open("ping", 2, 0.0)
    assert order.fill(second, b"pong\n") == Output()  # held back behind the chegada
    assert order.fill(first, b"started\n") == Output(b"started\npong\n")
    assert len(order) == 0


def test_a_slot_is_filled_once() -> None:
    order = ReplyOrder()
    slot = order.open("ping", 1, 0.0)
    assert order.fill(slot, b"a\n") == Output(b"a\n")
    assert order.fill(slot, b"b\n") == Output()


def test_a_push_waits_behind_outstanding_replies_and_goes_at_once_otherwise() -> None:
    order = ReplyOrder()
    assert order.push(b"sua_vez\n") == Output(b"sua_vez\n")
    reserva = order.open("reserva", 7, 0.0)
    assert order.push(b"sua_vez\n") == Output()
    assert order.fill(reserva, b"reserva_response\n") == Output(b"reserva_response\nsua_vez\n")


def test_a_later_reply_takes_the_waiting_slot_with_its_id() -> None:
    order = ReplyOrder()
    a = order.open("chegada", 1, 0.0)
    b = order.open("chegada", "1", 0.0)
    c = order.open("chegada", msgspec.UNSET, 0.0)
    for slot in (a, b, c):
        slot.waiting = True
    assert order.take_waiting("1") is b  # same value and type
    assert order.take_waiting(99) is a  # no match: the oldest waiting
    assert order.waiting_for_core()
    order.fill(a, b"x\n")
    assert order.take_waiting(1) is b


def test_a_closing_slot_is_the_last_thing_written() -> None:
    order = ReplyOrder()
    ok = order.open("ping", 1, 0.0)
    too_large = order.open("unparsed", msgspec.UNSET, 0.0, close=True)
    later = order.open("ping", 3, 0.0)
    order.fill(later, b"late\n")
    assert order.fill(too_large, b"too_large\n") == Output()
    assert order.fill(ok, b"pong\n") == Output(b"pong\ntoo_large\n", close=True)
    assert order.closed and len(order) == 0
    assert order.push(b"push\n") == Output()


def test_half_close_closes_after_the_last_outstanding_reply() -> None:
    order = ReplyOrder()
    assert not order.close_after_last()  # nothing outstanding: the edge closes at once
    a = order.open("ping", 1, 0.0)
    b = order.open("ping", 2, 0.0)
    assert order.close_after_last()
    assert order.fill(b, b"2\n") == Output()
    assert order.fill(a, b"1\n") == Output(b"1\n2\n", close=True)


@given(st.permutations(list(range(8))))
def test_any_fill_order_writes_every_reply_once_in_request_order(fills: list[int]) -> None:
    order = ReplyOrder()
    slots = [order.open("ping", i, 0.0) for i in range(8)]
    written = b"".join(order.fill(slots[i], f"{i}\n".encode()).data for i in fills)
    assert written == b"".join(f"{i}\n".encode() for i in range(8))
