"""Broker frames as a station decodes them: a message or BadBrokerFrame (with the cmd_id)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.codec import decode_broker_message, encode_datagram, pack
from common.errors import BadBrokerFrame, StationProtocolError
from common.messages import Hold, Start, Welcome


def test_commands_decode_and_unknown_fields_are_ignored() -> None:
    raw = msgspec.msgpack.encode(
        {"type": "hold", "cmd_id": "c1", "reservation_id": "R1", "vehicle_id": "V",
         "until": 1.5, "extra": [1, 2]}
    )  # fmt: skip
    assert decode_broker_message(raw) == Hold(
        cmd_id="c1", reservation_id="R1", vehicle_id="V", until=1.5
    )
    assert decode_broker_message(pack({"type": "welcome", "heartbeat_s": 1.0})) == Welcome()


@pytest.mark.parametrize(
    ("frame", "cmd_id"),
    [
        (b"\xc1", None),
        (msgspec.msgpack.encode([1, 2]), None),
        (msgspec.msgpack.encode({"type": "start", "cmd_id": "c2"}), "c2"),
        (msgspec.msgpack.encode({"type": "warp", "cmd_id": "c3"}), "c3"),
        (msgspec.msgpack.encode({"cmd_id": "c4"}), "c4"),
    ],
)
def test_malformed_frames_raise_with_cmd_id_when_known(frame: bytes, cmd_id: str | None) -> None:
    with pytest.raises(BadBrokerFrame) as info:
        decode_broker_message(frame)
    assert info.value.cmd_id == cmd_id
    assert "malformed" in info.value.message


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(BadBrokerFrame, match="too large"):
        decode_broker_message(b"\x00" * (70 * 1024))


@given(st.binary(max_size=300))
def test_any_bytes_give_a_message_or_bad_frame(frame: bytes) -> None:
    try:
        msg = decode_broker_message(frame)
    except BadBrokerFrame:
        return
    assert type(msg).__name__ in {"Welcome", "Heartbeat", "Hold", "Release", "Start", "Stop",
                                  "SessionAck"}  # fmt: skip


def test_start_round_trip() -> None:
    start = {"type": "start", "cmd_id": "c", "session_id": "S", "vehicle_id": "V",
             "nivel_bateria": 10, "nivel_carregar": 80, "capacidade_kwh": 60}  # fmt: skip
    decoded = decode_broker_message(pack(start))
    assert decoded == Start(cmd_id="c", session_id="S", vehicle_id="V", nivel_bateria=10.0,
                            nivel_carregar=80.0, capacidade_kwh=60.0)  # fmt: skip
    assert decode_broker_message(pack(decoded)) == decoded


def test_datagram_is_compact_json_and_capped_at_8_kib() -> None:
    data = encode_datagram({"id": "CP01", "available": True})
    assert data == b'{"id":"CP01","available":true}'
    with pytest.raises(StationProtocolError):
        encode_datagram({"id": "x" * 9000})
