"""Wire schemas through their codecs: datagrams, station messages, bus events, history."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, get_args

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.codec import (
    decode_broker_message,
    decode_datagram,
    decode_event,
    decode_history_request,
    decode_station_message,
    encode_datagram,
    encode_event,
    pack,
    unpack,
)
from common.errors import BusProtocolError, InvalidRequest, StationProtocolError
from common.messages import (
    MAX_DATAGRAM_BYTES,
    MAX_HISTORY_LIMIT,
    PUSH_TYPES,
    REPLY_TYPES,
    REQUEST_TYPES,
    TOPICS,
    Ack,
    BusEvent,
    Heartbeat,
    Hello,
    HistoryAccounts,
    HistorySetAvailability,
    HistorySince,
    HistorySnapshot,
    Hold,
    Release,
    SessionAck,
    SessionComplete,
    Start,
    StationToBroker,
    StatusDatagram,
    Stop,
    Welcome,
    to_builtins,
)
from common.schema import HISTORY_REQUESTS

# --- station status datagrams ---------------------------------------------------------------

MINIMAL = (
    b'{"id":"CP01","latitude":-12.26,"longitude":-38.96,"available":true,"queue_size":0,'
    b'"vehicle_id":"CAR1","battery":80}'
)

# a shared, loaded machine must not turn slow data generation into failures
SLOW_OK = [HealthCheck.too_slow]


def test_original_minimal_datagram() -> None:
    datagram = decode_datagram(MINIMAL)
    assert datagram == StatusDatagram(
        id="CP01",
        latitude=-12.26,
        longitude=-38.96,
        available=True,
        queue_size=0,
        vehicle_id="CAR1",
        battery=80.0,
    )
    assert datagram.estado is None and datagram.boot_id is None and datagram.seq is None


def test_minimal_datagram_without_optional_vehicle() -> None:
    raw = b'{"id":"CP02","latitude":1,"longitude":2,"available":false,"queue_size":3}'
    datagram = decode_datagram(raw)
    assert datagram.available is False and datagram.queue_size == 3
    assert datagram.vehicle_id is None and datagram.battery is None


def test_extended_datagram_round_trip() -> None:
    fields: dict[str, Any] = {
        "id": "CP07",
        "latitude": -12.97,
        "longitude": -38.5,
        "available": False,
        "queue_size": 0,
        "estado": "carregando",
        "potencia_kw": 150.0,
        "preco_kwh": 2.5,
        "session_id": "ses-1",
        "energia_kwh": 12.25,
        "boot_id": "b0a1",
        "seq": 42,
        "interval_s": 2.0,
        "ts": 1744020009.5,
        "vehicle_id": "CAR9",
        "battery": 55.5,
        "conector_livre": False,
        "potencia_atual_kw": 11.0,
        "future_field": {"ignored": True},
    }
    raw = encode_datagram(fields)
    assert b" " not in raw.replace(b"CP07", b"")
    datagram = decode_datagram(raw)
    assert to_builtins(datagram) == {k: v for k, v in fields.items() if k != "future_field"}


def test_oversize_datagram_is_refused() -> None:
    padding = "x" * MAX_DATAGRAM_BYTES
    raw = MINIMAL[:-1] + f',"pad":"{padding}"}}'.encode()
    with pytest.raises(StationProtocolError, match="larger"):
        decode_datagram(raw)
    with pytest.raises(StationProtocolError):
        encode_datagram({"id": "CP01", "pad": padding})


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"", None),
        (b"\x00\xff garbage", None),
        (b'{"id":"CP01","latitude":', None),
        (b"[1,2,3]", None),
        (b'{"latitude":1,"longitude":2}', "id"),
        (b'{"id":"","latitude":1,"longitude":2}', "id"),
        (b'{"id":"CP01","latitude":91,"longitude":2}', "latitude"),
        (b'{"id":"CP01","latitude":1,"longitude":"2"}', "longitude"),
        (b'{"id":"CP01","latitude":1,"longitude":2,"estado":"voando"}', "estado"),
        (b'{"id":"CP01","latitude":1,"longitude":2,"potencia_kw":0}', "potencia_kw"),
        (b'{"id":"CP01","latitude":1,"longitude":2,"seq":"7"}', "seq"),
        (b'{"id":"CP01","latitude":1,"longitude":2,"available":"yes"}', "available"),
    ],
)
def test_bad_datagrams_raise_station_protocol_error(raw: bytes, field: str | None) -> None:
    with pytest.raises(StationProtocolError) as info:
        decode_datagram(raw)
    assert info.value.field == field
    assert info.value.message


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None, suppress_health_check=SLOW_OK)
def test_datagram_decoder_only_raises_station_protocol_error(raw: bytes) -> None:
    try:
        datagram = decode_datagram(raw)
    except StationProtocolError:
        return
    assert isinstance(datagram, StatusDatagram)


# --- station <-> broker (msgpack) ----------------------------------------------------------

STATION_MESSAGES = [
    Hello(
        id="CP01",
        latitude=-12.26,
        longitude=-38.96,
        potencia_kw=22.0,
        preco_kwh=1.9,
        boot_id="b1",
        interval_s=2.0,
    ),
    Heartbeat(),
    Ack(cmd_id="c1", ok=True),
    Ack(cmd_id="c2", ok=False, error="busy"),
    SessionComplete(
        session_id="s1",
        vehicle_id="CAR1",
        energia_kwh=30.5,
        nivel_inicial=20.0,
        nivel_final=80.0,
        started_at=1744020009.0,
        ended_at="2025-04-07T10:30:00Z",
        reason="stopped",
    ),
]
BROKER_MESSAGES = [
    Welcome(heartbeat_s=1.0),
    Heartbeat(),
    Hold(cmd_id="c1", reservation_id="r1", vehicle_id="CAR1", until=1744020609.0),
    Release(cmd_id="c2", reservation_id="r1"),
    Start(
        cmd_id="c3",
        session_id="s1",
        vehicle_id="CAR1",
        nivel_bateria=20.0,
        nivel_carregar=80.0,
        capacidade_kwh=60.0,
    ),
    Stop(cmd_id="c4", session_id="s1"),
    SessionAck(session_id="s1"),
]


@pytest.mark.parametrize("message", STATION_MESSAGES, ids=lambda m: type(m).__name__)
def test_station_messages_round_trip(message: Any) -> None:
    frame = pack(message)
    assert unpack(frame)["type"] == type(message).__struct_config__.tag
    assert decode_station_message(frame) == message


@pytest.mark.parametrize("message", BROKER_MESSAGES, ids=lambda m: type(m).__name__)
def test_broker_messages_round_trip(message: Any) -> None:
    assert decode_broker_message(pack(message)) == message


def test_station_messages_from_plain_msgpack_with_extra_fields() -> None:
    frame = msgpack.packb({"type": "hello", "id": "CP03", "latitude": 1, "longitude": 2, "x": 1})
    hello = decode_station_message(frame)
    assert hello == Hello(id="CP03", latitude=1.0, longitude=2.0)
    assert decode_station_message(msgpack.packb({"type": "heartbeat"})) == Heartbeat()


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (b"", None),
        (b"\xc1", None),
        (msgpack.packb([1, 2]), None),
        (msgpack.packb({"id": "CP01"}), "type"),
        (msgpack.packb({"type": "welcome"}), "type"),
        (msgpack.packb({"type": "launch"}), "type"),
        (msgpack.packb({"type": "ack", "ok": True}), "cmd_id"),
        (msgpack.packb({"type": "ack", "cmd_id": "c", "ok": "yes"}), "ok"),
        (msgpack.packb({"type": "hello", "id": "CP", "latitude": 99, "longitude": 0}), "latitude"),
        (
            msgpack.packb(
                {
                    "type": "session_complete",
                    "session_id": "s",
                    "vehicle_id": "v",
                    "energia_kwh": 1,
                    "nivel_inicial": 1,
                    "nivel_final": 2,
                    "started_at": 1,
                    "ended_at": 2,
                    "reason": "boredom",
                }
            ),
            "reason",
        ),
    ],
)
def test_bad_station_messages(frame: bytes, field: str | None) -> None:
    with pytest.raises(StationProtocolError) as info:
        decode_station_message(frame)
    assert info.value.field == field


def test_station_commands_are_not_station_messages() -> None:
    with pytest.raises(StationProtocolError):
        decode_station_message(pack(BROKER_MESSAGES[2]))
    with pytest.raises(StationProtocolError):
        decode_broker_message(pack(STATION_MESSAGES[0]))


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None, suppress_health_check=SLOW_OK)
def test_msgpack_decoders_only_raise_their_errors(frame: bytes) -> None:
    decoders: list[tuple[Callable[[bytes], Any], type[Exception], tuple[type, ...]]] = [
        (decode_station_message, StationProtocolError, get_args(StationToBroker)),
        (decode_broker_message, StationProtocolError, tuple(type(m) for m in BROKER_MESSAGES)),
        (decode_history_request, InvalidRequest, HISTORY_REQUESTS),
        (lambda f: decode_event([b"point.status", f]), BusProtocolError, (BusEvent,)),
    ]
    for decoder, error, kinds in decoders:
        try:
            message = decoder(frame)
        except error as exc:
            assert str(exc)
        else:
            assert isinstance(message, kinds)


# --- bus events ------------------------------------------------------------------------------


def test_event_frames_and_round_trip() -> None:
    event = BusEvent(
        seq=7,
        ts=1744020009.25,
        topic="charging.completed",
        data={"session_id": "s1", "cost": 12.34, "payment_method": "Débito em conta"},
    )
    frames = encode_event(event)
    assert frames[0] == b"charging.completed"
    assert msgpack.unpackb(frames[1]) == {
        "seq": 7,
        "ts": 1744020009.25,
        "topic": "charging.completed",
        "data": {"session_id": "s1", "cost": 12.34, "payment_method": "Débito em conta"},
    }
    assert decode_event(frames) == event


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"point.status"],
        [b"a", b"b", b"c"],
        [b"point.status", b"\xc1"],
        [b"point.status", msgpack.packb([1])],
        [b"point.status", msgpack.packb({"seq": 1, "ts": 1.0, "topic": "point.status"})],
        [
            b"point.status",
            msgpack.packb({"seq": "1", "ts": 1, "topic": "point.status", "data": {}}),
        ],
        [b"point.status", msgpack.packb({"seq": 1, "ts": 1, "topic": "point.online", "data": {}})],
        [b"\xff\xfe", msgpack.packb({"seq": 1, "ts": 1, "topic": "x", "data": {}})],
    ],
)
def test_bad_events_raise_bus_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(BusProtocolError):
        decode_event(frames)


# --- history requests -------------------------------------------------------------------------


def test_history_requests() -> None:
    assert decode_history_request(pack({"op": "since", "seq": 5, "limit": 10})) == HistorySince(
        seq=5, limit=10
    )
    assert decode_history_request(pack({"op": "since"})) == HistorySince(
        seq=0, limit=MAX_HISTORY_LIMIT
    )
    assert decode_history_request(pack({"op": "snapshot"})) == HistorySnapshot()
    with pytest.raises(InvalidRequest):  # one decoding: an unknown field is refused
        decode_history_request(pack({"op": "snapshot", "extra": 1}))
    assert decode_history_request(pack({"op": "accounts"})) == HistoryAccounts()
    request = {"op": "set_availability", "point_id": "CP1", "available": False, "reason": "r"}
    assert decode_history_request(pack(request)) == HistorySetAvailability(
        point_id="CP1", available=False, reason="r"
    )


def test_history_limit_above_maximum_is_lowered() -> None:
    request = decode_history_request(pack({"op": "since", "seq": 1, "limit": 10**6}))
    assert request == HistorySince(seq=1, limit=MAX_HISTORY_LIMIT)


@pytest.mark.parametrize(
    ("message", "field", "words"),
    [
        ({"op": "rewind"}, "op", "unknown op"),
        ({"seq": 1}, "op", "missing"),
        ({"op": "since", "seq": -1}, "seq", ">= 0"),
        ({"op": "since", "seq": "1"}, "seq", "int"),
        ({"op": "since", "limit": 0}, "limit", ">= 1"),
        ([1, 2], "request", "object"),
    ],
)
def test_bad_history_requests(message: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_history_request(pack(message))
    assert info.value.field == field
    assert words in info.value.message


def test_history_request_not_msgpack() -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_history_request(b"\xc1")
    assert info.value.field == "request"


# --- msgpack functions and the tables ----------------------------------------------------------


def test_pack_unpack_round_trip_and_interop() -> None:
    obj = {"a": [1, 2.5, "três", None, True], "b": {"c": b"\x00"}}
    assert unpack(pack(obj)) == obj
    assert msgpack.unpackb(pack(obj)) == obj
    assert unpack(msgpack.packb(obj)) == obj
    with pytest.raises(BusProtocolError):
        unpack(b"\xc1")
    with pytest.raises(BusProtocolError):
        unpack(b"")


def test_request_and_reply_tables_agree() -> None:
    assert set(REQUEST_TYPES) == set(REPLY_TYPES)
    assert not set(REPLY_TYPES.values()) & set(PUSH_TYPES)
    assert len(set(TOPICS)) == len(TOPICS) == 21
    assert json.loads(json.dumps(list(REQUEST_TYPES))) == [
        "bateria",
        "consulta",
        "reserva",
        "cancelar",
        "chegada",
        "parar",
        "custos",
        "status",
        "ping",
        "registrar",
        "autenticar",
    ]
