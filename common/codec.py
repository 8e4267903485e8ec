"""Wire codecs: vehicle JSON stream framing, replies, datagrams, msgpack, bus events.

Theory of operation
-------------------
Vehicles write JSON objects either one per line (NDJSON) or back to back with no
delimiter at all (the original Go client).  :class:`StreamDecoder` is sans-IO: it is
fed bytes and returns, in order, one :class:`DecodedRequest` or :class:`DecodeFailure`
per request found.

* A newline always ends a request: complete lines are decoded as they arrive, and an
  object still open at the end of its line is ``bad_json``.  Newlines are therefore
  the resynchronisation points after an error, and garbage never swallows the
  requests on the following lines.
* The fast path hands a whole line (or the whole pending buffer) to msgspec, which
  decodes and validates envelope and data in one pass into a tagged union.  Only
  when that fails (several objects back to back, an incomplete object, an invalid
  request) does the boundary scanner run: a regex tokenizer over strings (with
  escapes) and braces that finds where the first object ends.  msgspec is never
  asked to decode a prefix that may still grow, so a chunk that splits a UTF-8
  character or a number is harmless.
* Errors are classified by a slow path taken only on failure: syntax (``bad_json``),
  envelope (``invalid`` with ``field`` ``request``/``type``/``data``/``id``), unknown
  ``type`` (``unknown_type``), data schema (``invalid`` with the dotted field path,
  e.g. ``localizacao.latitude``).  The request ``id`` is echoed whenever it could be
  read.

The other codecs are thin msgspec wrappers that map library errors to the project's
exception tree (:mod:`common.errors`).
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple, Union

import msgspec
from msgspec import UNSET, UnsetType

from common.errors import (
    BadJson,
    BusProtocolError,
    EVError,
    InvalidRequest,
    ProtocolError,
    StationProtocolError,
    TooLarge,
    UnknownType,
)
from common.messages import (
    MAX_DATAGRAM_BYTES,
    MAX_HISTORY_LIMIT,
    MAX_REQUEST_BYTES,
    PAYMENT_METHODS,
    REQUEST_TYPES,
    BrokerToStation,
    BusEvent,
    Chegada,
    Envelope,
    HistoryRequest,
    HistorySince,
    Scalar,
    StationToBroker,
    StatusDatagram,
    VehicleRequest,
)
from common.timeutil import parse_timestamp

__all__ = [
    "DecodeFailure",
    "DecodedRequest",
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
    "unpack",
]


class DecodedRequest(NamedTuple):
    """A complete, valid vehicle request."""

    request: VehicleRequest


class DecodeFailure(NamedTuple):
    """A request that must be answered with an ``erro`` reply (``close``: then hang up)."""

    error: ProtocolError
    request_id: UnsetType | Scalar
    close: bool


# --- vehicle requests: one object --------------------------------------------------------


def _tagged_envelope(type_name: str, data_cls: type[Any]) -> type[Any]:
    """``{"type": type_name, "data": data_cls, "id": X}`` as one tagged struct.

    ``data`` may be left out when every field of ``data_cls`` has a default.
    """
    default: Any
    try:
        data_cls()
    except TypeError:
        default = msgspec.NODEFAULT
    else:
        default = msgspec.field(default_factory=data_cls)
    return msgspec.defstruct(
        f"_{data_cls.__name__}Envelope",
        [("data", data_cls, default), ("id", UnsetType | Scalar, UNSET)],
        tag=type_name,
        tag_field="type",
        frozen=True,
    )


_ENVELOPES: Final = tuple(_tagged_envelope(name, cls) for name, cls in REQUEST_TYPES.items())
_FAST_DECODER: Final[msgspec.json.Decoder[Any]] = msgspec.json.Decoder(Union[_ENVELOPES])  # noqa: UP007
_ENVELOPE_DECODER: Final = msgspec.json.Decoder(Envelope)
_DATA_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    name: msgspec.json.Decoder(cls) for name, cls in REQUEST_TYPES.items()
}
_ANY_DECODER: Final = msgspec.json.Decoder()
_SCALARS: Final = (str, int, float, bool, type(None))

_AT_PATH: Final = re.compile(r" - at `\$(.*)`$")
_MISSING: Final = re.compile(r"^Object missing required field `([^`]*)`")


def _field_path(message: str, prefix: str = "") -> tuple[str, str]:
    """(dotted field, readable detail) for a msgspec ValidationError message."""
    match = _AT_PATH.search(message)
    path = match.group(1) if match else ""
    detail = message[: match.start()] if match else message
    if path.startswith(prefix):
        path = path[len(prefix) :]
    path = path.lstrip(".")
    missing = _MISSING.match(detail)
    if missing:
        name = missing.group(1)
        field = f"{path}.{name}" if path else name
        return field, f"missing required field {field}"
    detail = detail.replace("`", "")
    return path, detail[:1].lower() + detail[1:]


def _invalid_from(exc: msgspec.ValidationError, prefix: str = "") -> InvalidRequest:
    field, detail = _field_path(str(exc), prefix)
    if field == "metodo_pagamento" and detail.startswith("invalid enum value"):
        detail = f"{detail[len('invalid enum value ') :]} is not one of " + ", ".join(
            PAYMENT_METHODS
        )
        return InvalidRequest(f"invalid metodo_pagamento: {detail}", field=field)
    if not field:
        return InvalidRequest(f"invalid data: {detail}", field="data")
    if detail.startswith("missing required field"):
        return InvalidRequest(detail, field=field)
    return InvalidRequest(f"invalid {field}: {detail}", field=field)


def _check_semantics(type_name: str, data: Any) -> None:
    """Rules a schema cannot say: timestamps must parse, chegada must charge upwards."""
    timestamp = getattr(data, "timestamp", None)
    if timestamp is not None:
        try:
            parse_timestamp(timestamp)
        except ValueError:
            raise InvalidRequest(
                f"invalid timestamp: {timestamp!r} is not an ISO 8601 date-time",
                field="timestamp",
            ) from None
    if type(data) is Chegada and data.nivel_carregar <= data.nivel_bateria:
        raise InvalidRequest(
            "invalid nivel_carregar: must be greater than nivel_bateria "
            f"({data.nivel_carregar:g} <= {data.nivel_bateria:g})",
            field="nivel_carregar",
        )


_JSON_KIND: Final = {
    "list": "an array",
    "str": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
}


def _classify(raw: bytes | memoryview) -> DecodedRequest | DecodeFailure:
    """The slow, exact path: decode one complete JSON text and say what is wrong."""
    try:
        obj = _ANY_DECODER.decode(raw)
    except msgspec.ValidationError:
        obj = UNSET  # valid syntax, a number msgspec cannot hold: the typed pass names it
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return DecodeFailure(BadJson(_bad_json_message(exc)), UNSET, False)
    request_id: UnsetType | Scalar = UNSET
    if obj is not UNSET:
        if not isinstance(obj, dict):
            kind = type(obj).__name__ if obj is not None else "null"
            msg = f"a request must be a JSON object, not {_JSON_KIND.get(kind, kind)}"
            return _failure(InvalidRequest(msg, field="request"))
        rid = obj.get("id", UNSET)
        if rid is not UNSET:
            if not isinstance(rid, _SCALARS):
                return _failure(InvalidRequest("id must be a JSON scalar", field="id"))
            request_id = rid
        type_name = obj.get("type")
        if type_name is None and "type" not in obj:
            msg = "missing required field type"
            return _failure(InvalidRequest(msg, field="type"), request_id)
        if not isinstance(type_name, str):
            return _failure(InvalidRequest("type must be a string", field="type"), request_id)
        if "data" in obj and not isinstance(obj["data"], dict):
            return _failure(InvalidRequest("data must be a JSON object", field="data"), request_id)
    try:
        envelope = _ENVELOPE_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        return _failure(_invalid_from(exc), request_id)
    request_id = envelope.id
    data_decoder = _DATA_DECODERS.get(envelope.type)
    if data_decoder is None:
        known = ", ".join(REQUEST_TYPES)
        msg = f"unknown request type {envelope.type!r}; known types: {known}"
        return _failure(UnknownType(msg), request_id)
    try:
        data = data_decoder.decode(envelope.data)
        _check_semantics(envelope.type, data)
    except msgspec.ValidationError as exc:
        return _failure(_invalid_from(exc), request_id)
    except InvalidRequest as exc:
        return _failure(exc, request_id)
    return DecodedRequest(VehicleRequest(envelope.type, data, request_id))


def _failure(
    error: ProtocolError, request_id: UnsetType | Scalar | object = UNSET
) -> DecodeFailure:
    rid: Any = request_id if isinstance(request_id, _SCALARS) else UNSET
    return DecodeFailure(error, rid, False)


def _bad_json_message(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return "invalid JSON: text is not valid UTF-8"
    if text.startswith("JSON is malformed: "):
        text = text[len("JSON is malformed: ") :]
    if text == "Input data was truncated":
        text = "incomplete JSON object"
    return f"invalid JSON: {text}"


def decode_one(raw: bytes | memoryview) -> DecodedRequest | DecodeFailure:
    """Decode one complete JSON text; never raises (fast path, then exact diagnosis)."""
    try:
        envelope = _FAST_DECODER.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return _classify(raw)
    type_name: str = envelope.__struct_config__.tag
    data = envelope.data
    try:
        _check_semantics(type_name, data)
    except InvalidRequest as exc:
        return DecodeFailure(exc, envelope.id, False)
    return DecodedRequest(VehicleRequest(type_name, data, envelope.id))


def decode_request(raw: bytes) -> VehicleRequest:
    """One JSON request object; raises BadJson, UnknownType or InvalidRequest."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise TooLarge(f"request larger than {MAX_REQUEST_BYTES} bytes")
    result = decode_one(raw)
    if isinstance(result, DecodeFailure):
        raise result.error
    return result.request


# --- vehicle requests: the stream -----------------------------------------------------------

_NOT_WS: Final = re.compile(rb"[^ \t\r\n]")
# An object nested at most two levels deep (every request of the original client), matched
# in one go; strings may hold braces, quotes and escapes.
_STRING: Final = rb'"(?:[^"\\]|\\.)*"'
_FLAT: Final = rb"\{(?:[^{}\"]|" + _STRING + rb")*\}"
_OBJECT2: Final = re.compile(rb"\{(?:[^{}\"]|" + _STRING + rb"|" + _FLAT + rb")*\}", re.DOTALL)
# The general tokenizer: complete strings, brackets, or a string that is still open.
_TOKENS: Final = re.compile(_STRING + rb'|[{}\[\]]|"', re.DOTALL)
_OPENERS: Final = frozenset(b"{[")
_SCALAR_START: Final = frozenset(b'"-0123456789tfn')
_INCOMPLETE: Final = -1


def scan_value_end(buf: bytes, pos: int) -> int:
    """End (exclusive) of the object or array starting at ``buf[pos]``.

    Returns -1 when it is not closed within ``buf``.  Braces and brackets inside strings,
    and escaped quotes, do not count.  The result is exact for valid JSON; for invalid
    JSON it is some boundary, and the decoder then reports ``bad_json``.
    """
    if buf[pos] == 0x7B:  # "{"
        match = _OBJECT2.match(buf, pos)
        if match is not None:
            return match.end()
    depth = 0
    for token in _TOKENS.finditer(buf, pos):
        first = token.group()
        if first == b'"':  # a string left open
            return _INCOMPLETE
        if first in (b"{", b"["):
            depth += 1
        elif first in (b"}", b"]"):
            depth -= 1
            if depth <= 0:
                return token.end()
    return _INCOMPLETE


class StreamDecoder:
    """Sans-IO framing of the vehicle connection: fed bytes, returns items in order.

    After a ``too_large`` failure (``close=True``) the decoder is finished and returns
    nothing more.
    """

    __slots__ = ("_buf", "_closed", "_max")

    def __init__(self, max_request: int = MAX_REQUEST_BYTES) -> None:
        self._max = max_request
        self._buf = b""
        self._closed = False

    def buffered(self) -> int:
        """Bytes waiting for the rest of an object."""
        return len(self._buf)

    @property
    def closed(self) -> bool:
        """True once a ``too_large`` failure was returned."""
        return self._closed

    def feed(self, data: bytes) -> list[DecodedRequest | DecodeFailure]:
        """Append ``data`` and return every item now complete, in order."""
        if self._closed:
            return []
        buf = self._buf + data if self._buf else bytes(data)
        out: list[DecodedRequest | DecodeFailure] = []
        start = 0
        find = buf.find
        while not self._closed:
            end = find(b"\n", start)
            if end < 0:
                break
            if end > start:
                self._drain(buf[start:end], True, out)
            start = end + 1
        if self._closed:
            self._buf = b""
            return out
        rest = buf[start:] if start else buf
        if rest:
            left = self._drain(rest, False, out)
            rest = rest[left:] if left else rest
        self._buf = b"" if self._closed else rest
        return out

    def _too_large(self, out: list[DecodedRequest | DecodeFailure]) -> None:
        error = TooLarge(f"request larger than {self._max} bytes")
        out.append(DecodeFailure(error, UNSET, True))
        self._closed = True

    def _bad_json(self, out: list[DecodedRequest | DecodeFailure], message: str) -> None:
        out.append(DecodeFailure(BadJson(message), UNSET, False))

    def _drain(self, seg: bytes, final: bool, out: list[DecodedRequest | DecodeFailure]) -> int:
        """Decode the requests in ``seg`` (one line when ``final``, else the open tail).

        Returns how many bytes were consumed; the rest waits for more input.
        """
        size = len(seg)
        pos = 0
        first = True
        while True:
            match = _NOT_WS.search(seg, pos)
            if match is None:
                return size
            pos = match.start()
            lead = seg[pos]
            if first and lead == 0x7B and size - pos <= self._max:
                # fast path: the rest is usually exactly one request
                first = False
                rest = seg[pos:] if pos else seg
                try:
                    envelope = _FAST_DECODER.decode(rest)
                except (msgspec.DecodeError, UnicodeDecodeError):
                    pass
                else:
                    out.append(_from_envelope(envelope))
                    return size
            first = False
            if lead in _OPENERS:
                end = scan_value_end(seg, pos)
                if end == _INCOMPLETE:
                    if size - pos > self._max:
                        self._too_large(out)
                        return size
                    if final:
                        self._bad_json(out, "invalid JSON: object not closed at end of line")
                        return size
                    return pos
                if end - pos > self._max:
                    self._too_large(out)
                    return size
                item = _classify(seg[pos:end])
                out.append(item)
                if isinstance(item, DecodeFailure) and isinstance(item.error, BadJson):
                    return size  # discard up to the end of the line (or of the buffer)
                pos = end
                continue
            # not an object: a scalar or garbage, up to the end of the line
            if not final:
                if size - pos > self._max:
                    self._too_large(out)
                    return size
                if lead in _SCALAR_START:
                    return pos  # may be a JSON value still arriving: wait for its line
                self._bad_json(out, "invalid JSON: a request must start with '{'")
                return size
            if size - pos > self._max:
                self._too_large(out)
                return size
            out.append(_classify(seg[pos:]))
            return size


def _from_envelope(envelope: Any) -> DecodedRequest | DecodeFailure:
    type_name: str = envelope.__struct_config__.tag
    data = envelope.data
    try:
        _check_semantics(type_name, data)
    except InvalidRequest as exc:
        return DecodeFailure(exc, envelope.id, False)
    return DecodedRequest(VehicleRequest(type_name, data, envelope.id))


# --- vehicle replies and client-side helpers ----------------------------------------------


class _Message(msgspec.Struct, omit_defaults=True):
    type: str
    data: Any
    id: UnsetType | Scalar = UNSET


_JSON_ENCODER: Final = msgspec.json.Encoder()


def encode_reply(type: str, data: Any, request_id: UnsetType | Scalar = UNSET) -> bytes:
    """One reply (or push) line: compact JSON, UTF-8 unescaped, ``\\n``-terminated."""
    return _JSON_ENCODER.encode(_Message(type, data, request_id)) + b"\n"


def encode_error(error: EVError, request_id: UnsetType | Scalar = UNSET) -> bytes:
    """``{"type":"erro","data":{"code","message","field"?}}`` line for ``error``."""
    return encode_reply("erro", error.to_wire(), request_id)


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
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadJson(_bad_json_message(exc)) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise BadJson("a reply must be a JSON object with a string type")
    return obj


# --- station status datagrams (UDP JSON) ----------------------------------------------------

_DATAGRAM_DECODER: Final = msgspec.json.Decoder(StatusDatagram)


def decode_datagram(data: bytes) -> StatusDatagram:
    """One status datagram; raises StationProtocolError when oversized, not JSON or invalid."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise StationProtocolError(f"datagram larger than {MAX_DATAGRAM_BYTES} bytes")
    try:
        return _DATAGRAM_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        field, detail = _field_path(str(exc))
        raise StationProtocolError(
            f"invalid datagram: {field or 'datagram'}: {detail}", field=field or None
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise StationProtocolError(f"datagram is not JSON: {_bad_json_message(exc)}") from None


def encode_datagram(fields: dict[str, Any]) -> bytes:
    """A status datagram (compact JSON, no newline)."""
    body = _JSON_ENCODER.encode(fields)
    if len(body) > MAX_DATAGRAM_BYTES:
        raise StationProtocolError(f"datagram larger than {MAX_DATAGRAM_BYTES} bytes")
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
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BusProtocolError(f"not a msgpack message: {exc}") from None


def _station_message(decoder: msgspec.msgpack.Decoder[Any], frame: bytes) -> Any:
    try:
        return decoder.decode(frame)
    except msgspec.ValidationError as exc:
        field, detail = _field_path(str(exc))
        if not field and "missing required field type" in detail:
            field = "type"
        raise StationProtocolError(
            f"invalid station message: {field or 'message'}: {detail}", field=field or None
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise StationProtocolError(f"station message is not msgpack: {exc}") from None


def decode_station_message(frame: bytes) -> StationToBroker:
    """A station -> broker frame; raises StationProtocolError."""
    message: StationToBroker = _station_message(_STATION_DECODER, frame)
    return message


def decode_broker_message(frame: bytes) -> BrokerToStation:
    """A broker -> station frame; raises StationProtocolError."""
    message: BrokerToStation = _station_message(_BROKER_DECODER, frame)
    return message


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
        field, detail = _field_path(str(exc))
        raise BusProtocolError(f"invalid event: {detail}", field=field or None) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
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
        field, detail = _field_path(str(exc))
        if field == "op" and detail.startswith("invalid value"):
            detail = f"unknown op {detail[len('invalid value ') :]}; known ops: since, snapshot"
        if not field and "missing required field op" in detail:
            field = "op"
        raise InvalidRequest(detail, field=field or "request") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request is not msgpack: {exc}", field="request") from None
    if isinstance(request, HistorySince) and request.limit > MAX_HISTORY_LIMIT:
        request = msgspec.structs.replace(request, limit=MAX_HISTORY_LIMIT)
    return request
