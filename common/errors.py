"""The one exception tree of the project.

Every error the system raises on purpose derives from :class:`EVError`.
Errors that travel on the vehicle wire carry a ``code`` (the ``erro`` reply's
``data.code``, or the ``code`` of a refused ``*_response``); :func:`error_for_code`
maps a wire code back to its class, so a client raises exactly what the
broker meant.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EVError(Exception):
    """Root of every evcharge error."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        self.field = field

    def to_wire(self) -> dict[str, Any]:
        """The ``data`` of an ``erro`` reply for this error."""
        data: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            data["field"] = self.field
        return data


# --- errors of the vehicle wire (``erro`` replies) -------------------------------------


class ProtocolError(EVError):
    """An error answered with an ``erro`` reply on the vehicle connection."""

    code = "internal"


class BadJson(ProtocolError):
    code = "bad_json"


class TooLarge(ProtocolError):
    code = "too_large"


class UnknownType(ProtocolError):
    code = "unknown_type"


class InvalidRequest(ProtocolError):
    """Schema or value error; ``field`` names the offending field."""

    code = "invalid"


class Forbidden(ProtocolError):
    code = "forbidden"


class InternalError(ProtocolError):
    code = "internal"


class Unauthenticated(ProtocolError):
    """A registered vehicle id used by a connection that has not proved it."""

    code = "unauthenticated"


class Unavailable(ProtocolError):
    """A vehicle gateway could not reach the core within its ``--core-wait``."""

    code = "unavailable"


class RateLimited(ProtocolError):
    """Too many failed attempts from one address: refused for a while."""

    code = "rate_limited"


# --- refusals inside typed replies (``status: error``) ----------------------------------


class RequestRefused(EVError):
    """A well-formed request the broker refused (``*_response`` with status error)."""

    code = "refused"


def _refusal(name: str, wire_code: str) -> type[RequestRefused]:
    return type(name, (RequestRefused,), {"code": wire_code, "__module__": __name__})


AlreadyQueued = _refusal("AlreadyQueued", "already_queued")
QueueFull = _refusal("QueueFull", "queue_full")
AlreadyReserved = _refusal("AlreadyReserved", "already_reserved")
UnknownPoint = _refusal("UnknownPoint", "unknown_point")
PointOffline = _refusal("PointOffline", "point_offline")
PointUnavailable = _refusal("PointUnavailable", "point_unavailable")
NotYourTurn = _refusal("NotYourTurn", "not_your_turn")
NoReservation = _refusal("NoReservation", "no_reservation")
PointBusy = _refusal("PointBusy", "point_busy")
PointUnreachable = _refusal("PointUnreachable", "point_unreachable")
NoSession = _refusal("NoSession", "no_session")
AlreadyRegistered = _refusal("AlreadyRegistered", "already_registered")
RefusedInvalid = _refusal("RefusedInvalid", "invalid")


# --- errors of the processes themselves -------------------------------------------------


class ConfigError(EVError):
    """Bad command-line option or environment value."""

    code = "config"


class SiteRefused(EVError):
    """A site definition the broker does not take (energy.md): nothing is stored."""

    code = "site_refused"


class StoreError(EVError):
    """The database cannot be used: corrupt, locked by another broker, newer schema."""

    code = "store"


class LedgerUnavailable(StoreError):
    """The ledger's database server cannot be reached now (restarting, cut off): the
    write did not happen and may be tried again once it is back."""


class TransportError(EVError):
    """A peer could not be reached or the connection broke."""

    code = "transport"


class EventsPruned(EVError):
    """History no longer holds the events asked for: they are older than ``first_seq``.

    The history reply is ``{"error": "pruned", "first_seq": N}``.
    """

    code = "pruned"

    def __init__(self, first_seq: int) -> None:
        super().__init__(f"events before seq {first_seq} were pruned")
        self.first_seq = first_seq


class BrokerUnreachable(TransportError):
    code = "unreachable"


class RequestTimeout(TransportError):
    code = "timeout"


class HistoryRefused(TransportError):
    """The history ROUTER answered ``{"error": reason}`` (protocol.md, history)."""

    code = "history_refused"

    def __init__(self, op: object, reason: str) -> None:
        super().__init__(f"history refused {op!r}: {reason}")
        self.reason = reason

    @property
    def forbidden(self) -> bool:
        """An access refusal: the wire gives those as ``forbidden: ...``."""
        return self.reason.startswith("forbidden")


class StationProtocolError(EVError):
    """A malformed or unexpected station message (ZeroMQ or UDP)."""

    code = "station_protocol"


class MalformedMessage(StationProtocolError):
    """A station message or datagram that is not JSON / msgpack at all."""

    code = "malformed"


class InvalidMessage(StationProtocolError):
    """A station message or datagram that decodes but breaks its schema; ``field`` says where."""

    code = "invalid"


class OversizedMessage(StationProtocolError):
    """A datagram larger than the protocol allows."""

    code = "oversized"


# --- station input the core refuses (``Rejected`` effects; metrics label ``reason``) ---


class StationInputRefused(StationProtocolError):
    """A well-formed station message the core refuses; ``code`` is the metrics reason."""

    code = "refused"


class StaleDatagram(StationInputRefused):
    """A datagram not newer (boot, seq) than what its point already sent."""

    code = "stale"


class ReplayedDatagram(StationInputRefused):
    """A signed datagram not newer than the last accepted signed one of its point."""

    code = "replayed"


class NotSessionOwner(StationInputRefused):
    """A point completing a session another point runs."""

    code = "not_session_owner"


class NotCommandOwner(StationInputRefused):
    """A point acking a command sent to another point."""

    code = "not_command_owner"


class FiguresOutOfBounds(StationInputRefused):
    """A completion whose figures are impossible for its session."""

    code = "figures"


class EnergyAboveBound(StationInputRefused):
    """A session's reported energy above its bound (the battery, or power x time): the
    excess is not billed; the session is billed up to the bound."""

    code = "energy_above_bound"


class LimitRefused(StationInputRefused):
    """A station refused a ``limit`` command (energy.md): the higher limit stays in force."""

    code = "limit_refused"


class Overdraw(StationInputRefused):
    """A session drew more than its limit in force + 5 % (energy.md)."""

    code = "overdraw"


class BadBrokerFrame(StationProtocolError):
    """A broker frame a station cannot use; ``cmd_id`` is set when one could be read,
    so that the command can still be refused with ``ack ok=false``."""

    def __init__(self, message: str, cmd_id: str | None = None) -> None:
        super().__init__(message)
        self.cmd_id = cmd_id


class BusProtocolError(EVError):
    """A malformed bus event, history reply or other msgpack message of the bus side."""

    code = "bus_protocol"


_WIRE_ERRORS: dict[str, type[ProtocolError]] = {
    c.code: c
    for c in (
        BadJson,
        TooLarge,
        UnknownType,
        InvalidRequest,
        Forbidden,
        InternalError,
        Unauthenticated,
        RateLimited,
    )
}
_REFUSALS: dict[str, type[RequestRefused]] = {
    c.code: c
    for c in (
        AlreadyQueued,
        QueueFull,
        AlreadyReserved,
        UnknownPoint,
        PointOffline,
        PointUnavailable,
        NotYourTurn,
        NoReservation,
        PointBusy,
        PointUnreachable,
        NoSession,
        AlreadyRegistered,
    )
}


#: every code of an ``erro`` reply, and every code of a refusal (``status: error``)
WIRE_ERROR_CODES: tuple[str, ...] = tuple(_WIRE_ERRORS)
REFUSAL_CODES: tuple[str, ...] = (*_REFUSALS, RefusedInvalid.code)


def error_for_code(code: str, message: str = "", field: str | None = None) -> EVError:
    """The exception instance for a wire code (``erro`` code or refusal code)."""
    cls: type[EVError] = _WIRE_ERRORS.get(code) or _REFUSALS.get(code) or RequestRefused
    err = cls(message, field=field)
    if cls is RequestRefused:
        # (ignored below) code is a ClassVar; an unknown refusal code is kept on the instance
        err.code = code  # type: ignore[misc]
    return err
