"""One struct per bus topic: names, wire round trip, tolerant and strict decoding."""

from __future__ import annotations

import pytest

from common.codec import decode_event, encode_event
from common.errors import BusProtocolError
from common.events import (
    EVENT_TYPES,
    ChargingCompleted,
    PointStatus,
    event_data,
    event_fields,
)
from common.messages import TOPICS, BusEvent


def test_every_topic_has_one_struct() -> None:
    assert set(EVENT_TYPES) <= set(TOPICS)
    for topic, cls in EVENT_TYPES.items():
        assert topic == cls.TOPIC


def test_a_struct_round_trips_through_the_bus_frames() -> None:
    data = ChargingCompleted(
        session_id="S1", vehicle_id="CAR1", point_id="CP01",
        started_at="2025-04-07T10:00:00.000Z", ended_at="2025-04-07T10:10:00.000Z",
        energy_kwh=6.17, price_kwh=2.0, cost=12.34, currency="BRL",
        payment_method="Pix", reason="target_reached",
    )  # fmt: skip
    event = BusEvent(7, 1.5, data.TOPIC, event_fields(data))
    back = decode_event(encode_event(event))
    assert back == event
    assert event_data(back) == data


def test_unknown_topics_decode_to_none_and_extra_fields_are_ignored() -> None:
    assert event_data(BusEvent(1, 0.0, "point.future", {"x": 1})) is None
    fields = {"point_id": "CP01", "estado": "disponivel", "available": True, "queue_size": 0}
    typed = event_data(BusEvent(1, 0.0, "point.status", {**fields, "novo": 1}))
    assert typed == PointStatus(point_id="CP01", estado="disponivel", available=True, queue_size=0)


def test_a_bad_field_is_named() -> None:
    data = {"point_id": "CP01", "estado": "x", "available": True, "queue_size": "many"}
    with pytest.raises(BusProtocolError, match="queue_size"):
        event_data(BusEvent(1, 0.0, "point.status", data))
