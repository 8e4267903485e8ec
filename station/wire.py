"""Pure encoders and decoders for the station's two wires.

* UDP status datagrams: one compact JSON object, at most 8 KiB.
* ZeroMQ frames: one msgpack map with a ``type`` key, decoded into the structs of
  :mod:`common.messages`. Anything else raises :class:`StationProtocolError`,
  carrying the ``cmd_id`` when one could be read so that the command can still be
  refused with ``ack ok=false``.
"""

from __future__ import annotations

from typing import Any, Final, cast

import msgspec

from common.errors import StationProtocolError
from common.messages import MAX_DATAGRAM_BYTES, BrokerToStation

MAX_FRAME_BYTES: Final = 64 * 1024

_json = msgspec.json.Encoder()
_mp_enc = msgspec.msgpack.Encoder()
_mp_dec = msgspec.msgpack.Decoder(BrokerToStation)
_mp_any = msgspec.msgpack.Decoder()


class BadFrame(StationProtocolError):
    """A broker frame that is not a valid message; ``cmd_id`` is set when it had one."""

    def __init__(self, message: str, cmd_id: str | None = None) -> None:
        super().__init__(message)
        self.cmd_id = cmd_id


def encode_datagram(fields: dict[str, Any]) -> bytes:
    """A status datagram as compact JSON; raises when it would exceed 8 KiB."""
    data = _json.encode(fields)
    if len(data) > MAX_DATAGRAM_BYTES:
        raise StationProtocolError(f"status datagram of {len(data)} bytes exceeds 8 KiB")
    return data


def encode_frame(message: dict[str, Any]) -> bytes:
    """One msgpack frame for the broker."""
    return _mp_enc.encode(message)


def decode_frame(frame: bytes) -> BrokerToStation:
    """Decode one broker frame, or raise :class:`BadFrame`."""
    if len(frame) > MAX_FRAME_BYTES:
        raise BadFrame(f"frame of {len(frame)} bytes is too large")
    try:
        return cast(BrokerToStation, _mp_dec.decode(frame))
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise BadFrame(f"malformed message: {exc}", _cmd_id_of(frame)) from None


def _cmd_id_of(frame: bytes) -> str | None:
    try:
        raw = _mp_any.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    if isinstance(raw, dict):
        cmd_id = raw.get("cmd_id")
        if isinstance(cmd_id, str) and 0 < len(cmd_id) <= 256:
            return cmd_id
    return None
