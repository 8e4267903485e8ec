"""Vehicle requests on the wire: one JSON object, and the byte stream of a connection.

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
* Fast path: msgspec decodes a whole line (or a whole write without newline) and
  validates envelope and data in one pass into a tagged union of per-type envelopes.
  Objects back to back are split without a scanner: the span up to the next ``}{`` is
  tried first (a span that decodes is a whole request), else msgspec's "trailing
  characters" error gives where the first object ends.
* Only for incomplete objects and invalid requests does the boundary scanner run
  (:func:`scan_value`): it visits only quotes, backslashes and brackets, so braces and
  escaped quotes inside strings do not count, and it resumes where it stopped when
  more bytes arrive (linear cost for a slow sender).  msgspec is never trusted with a
  prefix that may still grow, so a chunk that splits a UTF-8 character is harmless.
* Errors are classified by a slow path taken only on failure: syntax (``bad_json``),
  envelope (``invalid`` with ``field`` ``request``/``type``/``data``/``id``), unknown
  ``type`` (``unknown_type``), data schema (``invalid`` with the dotted field path,
  e.g. ``localizacao.latitude``).  The request ``id`` is echoed whenever it could be
  read.  :mod:`common.codec` re-exports the public names.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final, NamedTuple, Union

import msgspec
from msgspec import UNSET, UnsetType

from common.errors import BadJson, InvalidRequest, ProtocolError, TooLarge, UnknownType
from common.messages import (
    MAX_REQUEST_BYTES,
    PAYMENT_METHODS,
    REQUEST_TYPES,
    Chegada,
    Envelope,
    Scalar,
    VehicleRequest,
)
from common.timeutil import parse_timestamp


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
_TYPE_NAMES: Final[dict[type[Any], str]] = dict(zip(_ENVELOPES, REQUEST_TYPES, strict=True))
_FAST_DECODER: Final[msgspec.json.Decoder[Any]] = msgspec.json.Decoder(Union[_ENVELOPES])  # noqa: UP007
_ENVELOPE_DECODER: Final = msgspec.json.Decoder(Envelope)
_DATA_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    name: msgspec.json.Decoder(cls) for name, cls in REQUEST_TYPES.items()
}
_ANY_DECODER: Final = msgspec.json.Decoder()
# msgspec raises these for malformed input (ValidationError, a DecodeError, is caught first
# where it matters); RecursionError stands for nesting deeper than the interpreter allows.
NOT_DECODABLE: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_SCALARS: Final = (str, int, float, bool, type(None))

_AT_PATH: Final = re.compile(r" - at `\$(.*)`$")
_MISSING: Final = re.compile(r"^Object missing required field `([^`]*)`")


def field_path(message: str) -> tuple[str, str]:
    """(dotted field, readable detail) for a msgspec ValidationError message."""
    match = _AT_PATH.search(message)
    path = match.group(1).lstrip(".") if match else ""
    detail = message[: match.start()] if match else message
    missing = _MISSING.match(detail)
    if missing:
        name = missing.group(1)
        field = f"{path}.{name}" if path else name
        return field, f"missing required field {field}"
    detail = detail.replace("`", "")
    return path, detail[:1].lower() + detail[1:]


def _invalid_from(exc: msgspec.ValidationError, root: str = "data") -> InvalidRequest:
    """The ``invalid`` error naming the field msgspec complained about.

    ``root`` is the field named when msgspec points at the whole value it decoded.
    """
    field, detail = field_path(str(exc))
    if field == "metodo_pagamento" and detail.startswith("invalid enum value"):
        detail = f"{detail[len('invalid enum value ') :]} is not one of " + ", ".join(
            PAYMENT_METHODS
        )
        return InvalidRequest(f"invalid metodo_pagamento: {detail}", field=field)
    if not field:
        return InvalidRequest(f"invalid {root}: {detail}", field=root)
    if detail.startswith("missing required field"):
        return InvalidRequest(detail, field=field)
    return InvalidRequest(f"invalid {field}: {detail}", field=field)


def _check_timestamp(timestamp: str) -> None:
    try:
        parse_timestamp(timestamp)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest(
            f"invalid timestamp: {timestamp!r} is not an ISO 8601 date-time", field="timestamp"
        ) from None


def _check_semantics(data: Any) -> None:
    """Rules a schema cannot say: timestamps must parse, chegada must charge upwards."""
    timestamp = getattr(data, "timestamp", None)
    if timestamp is not None:
        try:
            # fromisoformat alone is 10x cheaper; whatever it accepts, parse_timestamp
            # accepts too, and parse_timestamp stays the rule for everything else
            datetime.fromisoformat(timestamp)
        except ValueError:
            _check_timestamp(timestamp)
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
    except NOT_DECODABLE as exc:
        return DecodeFailure(BadJson(bad_json_message(exc)), UNSET, False)
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
        return _failure(_invalid_from(exc, "request"), request_id)
    except NOT_DECODABLE as exc:
        return _failure(BadJson(bad_json_message(exc)), request_id)
    request_id = envelope.id
    data_decoder = _DATA_DECODERS.get(envelope.type)
    if data_decoder is None:
        known = ", ".join(REQUEST_TYPES)
        msg = f"unknown request type {envelope.type!r}; known types: {known}"
        return _failure(UnknownType(msg), request_id)
    try:
        data = data_decoder.decode(envelope.data)
        _check_semantics(data)
    except msgspec.ValidationError as exc:
        return _failure(_invalid_from(exc), request_id)
    except NOT_DECODABLE as exc:
        return _failure(BadJson(bad_json_message(exc)), request_id)
    except InvalidRequest as exc:
        return _failure(exc, request_id)
    return DecodedRequest(VehicleRequest(envelope.type, data, request_id))


def _failure(error: ProtocolError, request_id: UnsetType | Scalar = UNSET) -> DecodeFailure:
    return DecodeFailure(error, request_id, False)


def bad_json_message(exc: Exception) -> str:
    """A readable ``invalid JSON: ...`` message for one of :data:`NOT_DECODABLE`."""
    text = str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return "invalid JSON: text is not valid UTF-8"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    if text.startswith("JSON is malformed: "):
        text = text[len("JSON is malformed: ") :]
    if text == "Input data was truncated":
        text = "incomplete JSON object"
    return f"invalid JSON: {text}"


def decode_one(raw: bytes | memoryview) -> DecodedRequest | DecodeFailure:
    """Decode one complete JSON text; never raises (fast path, then exact diagnosis)."""
    try:
        envelope = _FAST_DECODER.decode(raw)
    except NOT_DECODABLE:
        return _classify(raw)
    return _from_envelope(envelope)


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
_JSON_WS: Final = frozenset(b" \t\r\n")
# msgspec names where the bytes after a complete first value start: objects back to back
# are split at no extra cost.  Should the message ever change, the scanner takes over.
_TRAILING: Final = re.compile(r"trailing characters \(byte (\d+)\)")
# The resumable boundary scanner looks only at these bytes.
_STRUCTURAL: Final = re.compile(rb'["{}\[\]]')
_IN_STRING: Final = re.compile(rb'["\\]')
_OPENERS: Final = frozenset(b"{[")
_SCALAR_START: Final = frozenset(b'"-0123456789tfn')


class ScanState(NamedTuple):
    """Where :func:`scan_value` stopped inside a value that is not closed yet."""

    depth: int
    resume: int
    in_string: bool


def scan_value(
    buf: bytes | bytearray | memoryview, pos: int, state: ScanState | None = None
) -> int | ScanState:
    """End (exclusive) of the object or array starting at ``buf[pos]``, or the scan state.

    Braces and brackets inside strings, and escaped quotes, do not count.  When the value
    is not closed within ``buf`` the returned :class:`ScanState` lets a later call resume
    on a longer buffer without rescanning.  The result is exact for valid JSON; for
    invalid JSON it is some boundary, and decoding that span then reports ``bad_json``.
    """
    depth, at, in_string = (0, pos, False) if state is None else state
    size = len(buf)
    while True:
        if in_string:
            match = _IN_STRING.search(buf, at)
            if match is None:
                return ScanState(depth, size, True)
            at = match.start()
            if buf[at] == 0x5C:  # backslash: skip the escaped byte
                if at + 1 >= size:
                    return ScanState(depth, at, True)
                at += 2
                continue
            in_string = False
            at += 1
            continue
        match = _STRUCTURAL.search(buf, at)
        if match is None:
            return ScanState(depth, size, False)
        at = match.start()
        byte = buf[at]
        at += 1
        if byte == 0x22:  # '"'
            in_string = True
        elif byte in _OPENERS:
            depth += 1
        else:
            depth -= 1
            if depth <= 0:
                return at


Item = DecodedRequest | DecodeFailure


class StreamDecoder:
    """Sans-IO framing of one vehicle connection: fed bytes, returns items in order.

    A newline ends a request; objects back to back on a line (or in a tail not ended by
    a newline yet) are split with msgspec's help, or by :func:`scan_value` when they are
    incomplete or invalid.  After a ``too_large`` failure (``close=True``) the decoder
    is finished and returns nothing more.
    """

    __slots__ = ("_buf", "_closed", "_max", "_state")

    def __init__(self, max_request: int = MAX_REQUEST_BYTES) -> None:
        self._max = max_request
        self._buf = bytearray()  # the start of a value whose end has not arrived
        self._state: ScanState | None = None  # scan state of ``_buf``; None: wait for a line
        self._closed = False

    def buffered(self) -> int:
        """Bytes waiting for the rest of an object."""
        return len(self._buf)

    @property
    def closed(self) -> bool:
        """True once a ``too_large`` failure was returned: the connection must be closed."""
        return self._closed

    def feed(self, data: bytes) -> list[Item]:
        """Append ``data`` and return every item now complete, in order."""
        out: list[Item] = []
        if self._closed or not data:
            return out
        start = 0
        if self._buf:
            newline = data.find(b"\n")
            if newline < 0:
                self._buf += data
                self._resume(out)
                return out
            line = bytes(self._buf) + data[:newline]
            self._forget()
            self._drain(line, True, out)
            start = newline + 1
        find = data.find
        while not self._closed:
            end = find(b"\n", start)
            if end < 0:
                break
            if end > start:
                self._drain(data[start:end], True, out)
            start = end + 1
        if start < len(data) and not self._closed:
            self._drain(data[start:] if start else data, False, out)
        return out

    def _forget(self) -> None:
        self._buf = bytearray()
        self._state = None

    def _too_large(self, out: list[Item]) -> None:
        out.append(DecodeFailure(TooLarge(f"request larger than {self._max} bytes"), UNSET, True))
        self._closed = True
        self._forget()

    def _resume(self, out: list[Item]) -> None:
        """More bytes of the pending value arrived, still without a newline."""
        buf, state = self._buf, self._state
        if state is None:  # a scalar or string waiting for its line
            if len(buf) > self._max:
                self._too_large(out)
            return
        result = scan_value(buf, 0, state)
        if isinstance(result, ScanState):
            if len(buf) > self._max:
                self._too_large(out)
            else:
                self._state = result
            return
        if result > self._max:
            self._too_large(out)
            return
        span, rest = bytes(buf[:result]), bytes(buf[result:])
        self._forget()
        item = decode_one(span)
        out.append(item)
        if isinstance(item, DecodeFailure) and isinstance(item.error, BadJson):
            return  # no newline in the buffer: discard all of it
        if rest:
            self._drain(rest, False, out)

    def _drain(self, seg: bytes, final: bool, out: list[Item]) -> None:
        """Decode the requests in ``seg``: a whole line when ``final``, else the open tail.

        A value of the tail that is not complete yet is kept in ``_buf``.
        """
        size = len(seg)
        if seg[0] == 0x7B and size <= self._max:  # fast path: a line, or a write, is one request
            try:
                envelope = _FAST_DECODER.decode(seg)
            except NOT_DECODABLE:
                pass
            else:
                out.append(_from_envelope(envelope))
                return
        pos = 0
        if seg[0] in _JSON_WS:
            match = _NOT_WS.search(seg)
            if match is None:
                return
            pos = match.start()
        view = memoryview(seg)
        look_for_cut = True  # objects back to back with no space: split at "}{"
        while True:
            head = seg[pos]
            if head == 0x7B and look_for_cut:
                # A span that decodes is a whole request: a "}{" inside a string would
                # leave the string open and the span undecodable.
                cut = seg.find(b"}{", pos, pos + self._max + 1) + 1
                if cut > 0:
                    try:
                        envelope = _FAST_DECODER.decode(view[pos:cut])
                    except NOT_DECODABLE:
                        pass
                    else:
                        out.append(_from_envelope(envelope))
                        pos = cut
                        continue
                else:
                    look_for_cut = False  # not that kind of stream: stop looking
            if head in _OPENERS:
                item, end = _value_end(view, pos, self._max)
                if isinstance(end, ScanState):
                    if size - pos > self._max:
                        self._too_large(out)
                    elif final:
                        out.append(_bad_json("object not closed at the end of the line"))
                    else:
                        self._buf = bytearray(view[pos:])
                        self._state = end
                    return
                if end - pos > self._max:
                    self._too_large(out)
                    return
                item = item or decode_one(view[pos:end])
                out.append(item)
                if isinstance(item, DecodeFailure) and isinstance(item.error, BadJson):
                    return  # discard up to the end of the line (or of the buffer)
                match = _NOT_WS.search(seg, end)
                if match is None:
                    return
                pos = match.start()
            elif size - pos > self._max:
                self._too_large(out)
                return
            elif final:  # a scalar or garbage: the rest of the line is one item
                out.append(decode_one(view[pos:]))
                return
            elif head in _SCALAR_START:  # may be a JSON value still arriving
                self._buf = bytearray(view[pos:])
                return
            else:
                out.append(_bad_json("a request must start with '{'"))
                return


def _value_end(view: memoryview, pos: int, limit: int) -> tuple[Item | None, int | ScanState]:
    """The request at ``view[pos]`` when already decoded, and where it ends.

    msgspec decodes a window of at most ``limit + 1`` bytes: either the window is one
    request, or msgspec's error says where the bytes after a complete first request
    start.  Otherwise the scanner finds the end, or returns its state when the value
    is not complete within ``view`` (the state's positions count from ``pos``).
    """
    size = len(view)
    stop = min(size, pos + limit + 1)
    try:
        envelope = _FAST_DECODER.decode(view[pos:stop])
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        trailing = _TRAILING.search(str(exc))
        if trailing is not None:  # msgspec counts the offending byte itself
            end = pos + int(trailing.group(1)) - 1
            if pos < end < stop and view[end] in _OPENERS:
                return None, end
    except (UnicodeDecodeError, RecursionError):
        pass
    else:
        return _from_envelope(envelope), stop
    result = scan_value(view, pos)
    if isinstance(result, ScanState):
        return None, result._replace(resume=result.resume - pos)
    return None, result


def _bad_json(detail: str) -> DecodeFailure:
    """A ``bad_json`` failure found by the framing itself (no id can be read)."""
    return DecodeFailure(BadJson(f"invalid JSON: {detail}"), UNSET, False)


def _from_envelope(envelope: Any) -> DecodedRequest | DecodeFailure:
    """The request held by a tagged envelope of the fast path, checked for semantics."""
    type_name = _TYPE_NAMES[type(envelope)]
    data = envelope.data
    try:
        _check_semantics(data)
    except InvalidRequest as exc:
        return DecodeFailure(exc, envelope.id, False)
    return DecodedRequest(VehicleRequest(type_name, data, envelope.id))
