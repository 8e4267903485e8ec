"""Wire codecs: vehicle requests and replies, status datagrams, msgpack, bus events.

The vehicle request side (one object and the stream framing) lives in
:mod:`common.request_codec` and is re-exported here, so that every side of the system
imports its codecs from this one module.  The rest are thin msgspec wrappers that map
library errors to the project's exception tree (:mod:`common.errors`): replies are
compact UTF-8 JSON lines, datagrams compact JSON, everything on ZeroMQ msgpack.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from msgspec import UNSET, UnsetType

from common.errors import (
    BadBrokerFrame,
    BadJson,
    BusProtocolError,
    EVError,
    InvalidMessage,
    InvalidRequest,
    MalformedMessage,
    OversizedMessage,
    StationProtocolError,
)
from common.messages import (
    HISTORY_OPS,
    MAX_DATAGRAM_BYTES,
    MAX_HISTORY_LIMIT,
    MAX_STATION_FRAME,
    BrokerToStation,
    BusEvent,
    HistoryRequest,
    HistorySince,
    Scalar,
    StationToBroker,
    StatusDatagram,
)
from common.replies import error_data
from common.request_codec import (
    NOT_DECODABLE,
    DecodedRequest,
    DecodeFailure,
    ScanState,
    StreamDecoder,
    bad_json_message,
    decode_one,
    decode_request,
    field_path,
    scan_value,
)

__all__ = [
    "DecodeFailure",
    "DecodedRequest",
    "ScanState",
    "StreamDecoder",
    "decode_broker_message",
    "decode_datagram",
    "decode_event",
    "decode_history_request",
    "decode_one",
    "decode_reply",
    "decode_request",
    "decode_station_message",
    "encode_datagram",
    "encode_error",
    "encode_event",
    "encode_reply",
    "encode_request",
    "pack",
    "scan_value",
    "unpack",
]

_ANY_DECODER: Final = msgspec.json.Decoder()

# --- vehicle replies and client-side functions ----------------------------------------------


class _Message(msgspec.Struct, omit_defaults=True):
    """A vehicle request or reply envelope for encoding (``id`` left out when unset)."""

    type: str
    data: Any
    id: UnsetType | Scalar = UNSET
    truncated: bool = False


_JSON_ENCODER: Final = msgspec.json.Encoder()


def encode_reply(
    type: str, data: Any, request_id: UnsetType | Scalar = UNSET, *, truncated: bool = False
) -> bytes:
    """One reply (or push) line: compact JSON, UTF-8 unescaped, ``\\n``-terminated.

    ``truncated``: ``"truncated": true`` ends the envelope (a list cut at its limit).
    """
    return _JSON_ENCODER.encode(_Message(type, data, request_id, truncated)) + b"\n"


def encode_error(error: EVError, request_id: UnsetType | Scalar = UNSET) -> bytes:
    """``{"type":"erro","data":{"code","message","field"?}}`` line for ``error``."""
    return encode_reply("erro", error_data(error), request_id)


def encode_request(
    type: str,
    data: dict[str, Any],
    request_id: UnsetType | Scalar = UNSET,
    newline: bool = True,
) -> bytes:
    """A request as a client writes it (``newline=False``: the original client's form)."""
    body = _JSON_ENCODER.encode(_Message(type, data, request_id))
    return body + b"\n" if newline else body


def decode_reply(line: bytes) -> dict[str, Any]:
    """One reply line as a dict; raises BadJson when it is not a JSON object with a type."""
    try:
        obj = _ANY_DECODER.decode(line)
    except NOT_DECODABLE as exc:
        raise BadJson(bad_json_message(exc)) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise BadJson("a reply must be a JSON object with a string type")
    return obj


# --- station status datagrams (UDP JSON) ----------------------------------------------------

_DATAGRAM_DECODER: Final = msgspec.json.Decoder(StatusDatagram)


def decode_datagram(data: bytes) -> StatusDatagram:
    """One status datagram; raises StationProtocolError when oversized, not JSON or invalid."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise OversizedMessage(f"datagram larger than {MAX_DATAGRAM_BYTES} bytes")
    try:
        return _DATAGRAM_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        field, detail = field_path(str(exc))
        raise InvalidMessage(
            f"invalid datagram: {field or 'datagram'}: {detail}", field=field or None
        ) from None
    except NOT_DECODABLE as exc:
        raise MalformedMessage(f"datagram is not JSON: {bad_json_message(exc)}") from None


def encode_datagram(fields: dict[str, Any]) -> bytes:
    """A status datagram (compact JSON, no newline)."""
    body = _JSON_ENCODER.encode(fields)
    if len(body) > MAX_DATAGRAM_BYTES:
        raise OversizedMessage(f"datagram larger than {MAX_DATAGRAM_BYTES} bytes")
    return body


# --- msgpack: station commands, bus events, history ------------------------------------------

_MSGPACK_ENCODER: Final = msgspec.msgpack.Encoder()
_MSGPACK_ANY: Final = msgspec.msgpack.Decoder()
_STATION_DECODER: Final[msgspec.msgpack.Decoder[Any]] = msgspec.msgpack.Decoder(StationToBroker)
_BROKER_DECODER: Final[msgspec.msgpack.Decoder[Any]] = msgspec.msgpack.Decoder(BrokerToStation)
_EVENT_DECODER: Final = msgspec.msgpack.Decoder(BusEvent)
_HISTORY_DECODER: Final[msgspec.msgpack.Decoder[Any]] = msgspec.msgpack.Decoder(HistoryRequest)


def pack(obj: Any) -> bytes:
    """msgpack bytes for plain data or msgspec structs."""
    return _MSGPACK_ENCODER.encode(obj)


def unpack(data: bytes) -> Any:
    """Plain data from msgpack bytes; raises BusProtocolError when it is not msgpack."""
    try:
        return _MSGPACK_ANY.decode(data)
    except NOT_DECODABLE as exc:
        raise BusProtocolError(f"not a msgpack message: {exc}") from None


def _station_message(decoder: msgspec.msgpack.Decoder[Any], frame: bytes) -> Any:
    """One station/broker frame through ``decoder``, errors as StationProtocolError."""
    try:
        return decoder.decode(frame)
    except msgspec.ValidationError as exc:
        field, detail = field_path(str(exc))
        raise InvalidMessage(
            f"invalid station message: {field or 'message'}: {detail}", field=field or None
        ) from None
    except NOT_DECODABLE as exc:
        raise MalformedMessage(f"station message is not msgpack: {exc}") from None


def decode_station_message(frame: bytes) -> StationToBroker:
    """A station -> broker frame; raises StationProtocolError."""
    message: StationToBroker = _station_message(_STATION_DECODER, frame)
    return message


def decode_broker_message(frame: bytes) -> BrokerToStation:
    """A broker -> station frame; raises BadBrokerFrame (with the ``cmd_id`` when readable)."""
    if len(frame) > MAX_STATION_FRAME:
        raise BadBrokerFrame(f"frame of {len(frame)} bytes is too large")
    try:
        message: BrokerToStation = _station_message(_BROKER_DECODER, frame)
    except StationProtocolError as exc:
        raise BadBrokerFrame(f"malformed message: {exc.message}", _cmd_id_of(frame)) from None
    return message


def _cmd_id_of(frame: bytes) -> str | None:
    try:
        raw = _MSGPACK_ANY.decode(frame)
    except NOT_DECODABLE:
        return None
    if isinstance(raw, dict):
        cmd_id = raw.get("cmd_id")
        if isinstance(cmd_id, str) and 0 < len(cmd_id) <= 256:
            return cmd_id
    return None


def encode_event(event: BusEvent) -> list[bytes]:
    """``[topic, payload]`` frames of a bus event."""
    return [event.topic.encode(), _MSGPACK_ENCODER.encode(event)]


def decode_event(frames: list[bytes]) -> BusEvent:
    """A bus event from its two frames; raises BusProtocolError."""
    if len(frames) != 2:
        raise BusProtocolError(f"a bus message has 2 frames, not {len(frames)}")
    try:
        topic = bytes(frames[0]).decode()
    except UnicodeDecodeError:
        raise BusProtocolError("topic frame is not UTF-8") from None
    try:
        event = _EVENT_DECODER.decode(frames[1])
    except msgspec.ValidationError as exc:
        field, detail = field_path(str(exc))
        raise BusProtocolError(f"invalid event: {detail}", field=field or None) from None
    except NOT_DECODABLE as exc:
        raise BusProtocolError(f"event payload is not msgpack: {exc}") from None
    if event.topic != topic:
        raise BusProtocolError(f"topic frame {topic!r} differs from payload {event.topic!r}")
    return event


def decode_history_request(frame: bytes) -> HistoryRequest:
    """A history/snapshot request; raises InvalidRequest (unknown op, bad fields).

    ``limit`` above the maximum is lowered to it rather than refused.
    """
    try:
        request: HistoryRequest = _HISTORY_DECODER.decode(frame)
    except msgspec.ValidationError as exc:
        field, detail = field_path(str(exc))
        if field == "op" and detail.startswith("invalid value"):
            known = ", ".join(HISTORY_OPS)
            detail = f"unknown op {detail[len('invalid value ') :]}; known ops: {known}"
        raise InvalidRequest(detail, field=field or "request") from None
    except NOT_DECODABLE as exc:
        raise InvalidRequest(f"request is not msgpack: {exc}", field="request") from None
    if isinstance(request, HistorySince) and request.limit > MAX_HISTORY_LIMIT:
        request = msgspec.structs.replace(request, limit=MAX_HISTORY_LIMIT)
    return request
