"""5557: one decoding, the role check on the decoded request (security contract, second round).

The attack: a consumer key sent ``set_availability`` with an extra field holding a
msgpack timestamp extension with an impossible body; the role check read ``op``
with a generic decoder that failed on the extension, let it through as "unknown",
and the typed decoder skipped the unknown field and ran the operator's operation.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.msgpack import Ext, encode

from tests.e2e.test_security_attacks import Scene, scene  # noqa: F401 (the fixture)
from tests.support.credentials import curve_client_for
from tests.support.raw_clients import HOST, wait_for

pytestmark = pytest.mark.e2e

BAD_TIMESTAMP = Ext(-1, b"\x00\x01\x02")  # no timestamp has a 3-byte body


def history_socket(sc: Scene, role: str) -> zmq.Socket[bytes]:
    sock = sc.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    curve_client_for(sock, sc.ports.history, role)
    sock.connect(f"tcp://{HOST}:{sc.ports.history}")
    return sock


def ask(sock: zmq.Socket[bytes], request: bytes) -> dict[str, Any]:
    sock.send(request)
    assert sock.poll(5000), "no reply"
    reply = msgpack.unpackb(sock.recv(), strict_map_key=False)
    assert isinstance(reply, dict)
    return reply


def registered_point(sc: Scene) -> None:
    st_ = sc.station("SEC01", sc.real)
    try:
        st_.greet()
        st_.datagram()
        wait_for(lambda: "SEC01" in sc.points(), what="SEC01 registered")
    finally:
        st_.close()


def state(sock: zmq.Socket[bytes]) -> tuple[Any, ...]:
    """What an operation could change: the newest event and the points' availability."""
    snap = ask(sock, msgpack.packb({"op": "snapshot"}))
    points = sorted((p["id"], p.get("estado"), p.get("disponivel")) for p in snap["points"])
    return snap["seq"], tuple(points)


def toggle(**extra: Any) -> bytes:
    return encode(
        {
            "op": "set_availability",
            "point_id": "SEC01",
            "available": False,
            "reason": "x",
            **extra,
        }
    )


def test_a_consumer_cannot_smuggle_an_operator_op(scene: Scene) -> None:  # noqa: F811
    registered_point(scene)
    consumer = history_socket(scene, "consumer")
    operator = history_socket(scene, "operator")
    try:
        before = state(consumer)
        for request in (toggle(zz=BAD_TIMESTAMP), toggle(zz=1), toggle()):
            reply = ask(consumer, request)
            assert "error" in reply and "ok" not in reply, reply
        assert state(consumer) == before
        # the operator: an extra field is refused too, the exact request works
        assert "error" in ask(operator, toggle(zz=1))
        assert state(consumer) == before
        reply = ask(operator, toggle())
        assert reply.get("ok") is True, reply
        assert state(consumer) != before
    finally:
        consumer.close(linger=0)
        operator.close(linger=0)


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8),
    st.binary(max_size=8),
    st.builds(Ext, st.integers(-128, 127), st.binary(max_size=16)),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
OPS = st.sampled_from(["set_availability", "since", "snapshot", "accounts", "SET_AVAILABILITY"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    op=OPS,
    fields=st.dictionaries(
        st.sampled_from(["point_id", "available", "reason", "seq", "limit", "zz", "op2"]),
        VALUES,
        max_size=4,
    ),
    point=st.sampled_from(["SEC01", None]),
)
def test_any_msgpack_map_from_a_consumer_changes_nothing(
    scene: Scene,  # noqa: F811
    op: str,
    fields: dict[str, Any],
    point: str | None,
) -> None:
    if "SEC01" not in scene.points():
        registered_point(scene)
    request: dict[str, Any] = {"op": op, **fields}
    if point is not None:
        request.setdefault("point_id", point)
        request.setdefault("available", False)
    sock = history_socket(scene, "consumer")
    try:
        before = state(sock)
        reply = ask(sock, encode(request))
        assert "ok" not in reply, (request, reply)
        assert not str(reply.get("error", "")).startswith("internal"), (request, reply)
        assert state(sock) == before
    finally:
        sock.close(linger=0)
