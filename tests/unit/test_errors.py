"""The one exception tree and the wire code <-> exception mapping."""

from __future__ import annotations

import pytest

from common import errors
from common.errors import (
    AlreadyQueued,
    AlreadyReserved,
    BadJson,
    BrokerUnreachable,
    BusProtocolError,
    ConfigError,
    EVError,
    Forbidden,
    InternalError,
    InvalidRequest,
    NoReservation,
    NoSession,
    NotYourTurn,
    PointBusy,
    PointOffline,
    PointUnavailable,
    PointUnreachable,
    ProtocolError,
    QueueFull,
    RequestRefused,
    RequestTimeout,
    StationProtocolError,
    StoreError,
    TooLarge,
    TransportError,
    UnknownPoint,
    UnknownType,
    error_for_code,
)

WIRE: dict[str, type[EVError]] = {
    "bad_json": BadJson,
    "too_large": TooLarge,
    "unknown_type": UnknownType,
    "invalid": InvalidRequest,
    "forbidden": Forbidden,
    "internal": InternalError,
}
REFUSALS: dict[str, type[EVError]] = {
    "already_queued": AlreadyQueued,
    "queue_full": QueueFull,
    "already_reserved": AlreadyReserved,
    "unknown_point": UnknownPoint,
    "point_offline": PointOffline,
    "point_unavailable": PointUnavailable,
    "not_your_turn": NotYourTurn,
    "no_reservation": NoReservation,
    "point_busy": PointBusy,
    "point_unreachable": PointUnreachable,
    "no_session": NoSession,
}


@pytest.mark.parametrize(("code", "cls"), sorted(WIRE.items()))
def test_error_for_every_wire_code(code: str, cls: type[EVError]) -> None:
    err = error_for_code(code, "boom", "nivel_bateria")
    assert type(err) is cls
    assert isinstance(err, ProtocolError)
    assert err.code == code
    assert err.message == "boom" and str(err) == "boom"
    assert err.field == "nivel_bateria"
    assert err.to_wire() == {"code": code, "message": "boom", "field": "nivel_bateria"}


@pytest.mark.parametrize(("code", "cls"), sorted(REFUSALS.items()))
def test_error_for_every_refusal_code(code: str, cls: type[EVError]) -> None:
    err = error_for_code(code, "Queue full")
    assert type(err) is cls and isinstance(err, RequestRefused)
    assert err.code == code and err.field is None
    assert err.to_wire() == {"code": code, "message": "Queue full"}
    assert cls.__module__ == "common.errors" and cls.__name__ in dir(errors)


def test_unknown_code_keeps_its_code_on_the_instance_only() -> None:
    err = error_for_code("brand_new_refusal", "later")
    assert type(err) is RequestRefused
    assert err.code == "brand_new_refusal"
    assert RequestRefused.code == "refused"
    assert error_for_code("refused").code == "refused"


def test_codes_are_unique_per_class() -> None:
    classes: list[type[EVError]] = [*WIRE.values(), *REFUSALS.values()]
    assert len({c.code for c in classes}) == len(classes)
    assert InternalError.code == ProtocolError.code == EVError.code == "internal"


def test_default_message_is_the_class_name() -> None:
    err = QueueFull()
    assert err.message == "QueueFull" and str(err) == "QueueFull"
    assert err.to_wire() == {"code": "queue_full", "message": "QueueFull"}


@pytest.mark.parametrize(
    ("cls", "parent", "code"),
    [
        (ConfigError, EVError, "config"),
        (StoreError, EVError, "store"),
        (TransportError, EVError, "transport"),
        (BrokerUnreachable, TransportError, "unreachable"),
        (RequestTimeout, TransportError, "timeout"),
        (StationProtocolError, EVError, "station_protocol"),
        (BusProtocolError, EVError, "bus_protocol"),
        (ProtocolError, EVError, "internal"),
        (RequestRefused, EVError, "refused"),
    ],
)
def test_tree(cls: type[EVError], parent: type[EVError], code: str) -> None:
    assert issubclass(cls, parent) and issubclass(cls, Exception)
    assert cls.code == code
    with pytest.raises(EVError):
        raise cls("x")


def test_every_error_class_derives_from_everror() -> None:
    found = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert len(found) >= 25
    assert all(issubclass(obj, EVError) for obj in found)


def test_datagram_decode_errors_carry_their_outcome_code() -> None:
    from common.codec import MAX_DATAGRAM_BYTES, decode_datagram
    from common.errors import InvalidMessage, MalformedMessage, OversizedMessage

    cases = [
        (b"x" * (MAX_DATAGRAM_BYTES + 1), OversizedMessage, "oversized"),
        (b"{not json", MalformedMessage, "malformed"),
        (b'{"id": 5}', InvalidMessage, "invalid"),
    ]
    for body, cls, code in cases:
        with pytest.raises(cls) as err:
            decode_datagram(body)
        assert err.value.code == code and isinstance(err.value, StationProtocolError)


def test_history_refusals_say_whether_access_was_refused() -> None:
    from common.errors import HistoryRefused, TransportError

    denied = HistoryRefused("set_availability", "forbidden: credential revoked")
    other = HistoryRefused("set_availability", "unknown point 'X'")
    assert isinstance(denied, TransportError) and denied.forbidden and not other.forbidden
    assert denied.message == "history refused 'set_availability': forbidden: credential revoked"
