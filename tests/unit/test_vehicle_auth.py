"""broker.core.vehicle_auth: the vehicle gate, driven without sockets and with a fake clock."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.vehicle_auth import (
    BLOCK_S,
    MAX_FAILURES,
    AuthMode,
    ConnAuth,
    VehicleAuth,
    Verdict,
    token_digest,
)
from common.messages import (
    Autenticar,
    Bateria,
    Cancelar,
    Consulta,
    Custos,
    Location,
    Ping,
    Registrar,
    Reserva,
    StatusQuery,
)
from tests.support.core_harness import wire

HERE = Location(latitude=-12.0, longitude=-38.0)
_tokens = itertools.count(1)


def fake_token() -> str:
    return base64.urlsafe_b64encode(next(_tokens).to_bytes(32, "big")).decode().rstrip("=")


def gate(mode: AuthMode = AuthMode.OPEN) -> VehicleAuth:
    return VehicleAuth(mode, fake_token)


def conn(n: int, address: str = "10.0.0.1") -> ConnAuth:
    return ConnAuth(n, address, f"CAR{40000 + n}")


def request(rtype: str, vid: str | None = None, **extra: Any) -> Any:
    match rtype:
        case "bateria":
            return Bateria(id_veiculo=vid, nivel_bateria=50, localizacao=HERE)
        case "consulta":
            return Consulta(id_veiculo=vid, localizacao=HERE)
        case "reserva":
            return Reserva(id_veiculo=vid, id_ponto_recarga="CP01")
        case "cancelar":
            return Cancelar(id_veiculo=vid, id_ponto_recarga="CP01")
        case "custos":
            return Custos(id_veiculo=vid)
        case "status":
            return StatusQuery(id_veiculo=vid)
        case "ping":
            return Ping(id_veiculo=vid)
        case "registrar":
            assert vid is not None
            return Registrar(id_veiculo=vid)
        case "autenticar":
            assert vid is not None
            return Autenticar(id_veiculo=vid, token=extra["token"])
    raise AssertionError(rtype)


def admit(g: VehicleAuth, c: ConnAuth, rtype: str, vid: str | None = None, **kw: Any) -> Verdict:
    return g.admit(c, rtype, request(rtype, vid, **kw), kw.pop("now", 1000.0))


def code(v: Verdict) -> str:
    if v.error is not None:
        return v.error.code
    if v.reply is not None:
        return str(wire(v.reply[1])["code"])
    return "ok"


def register(g: VehicleAuth, c: ConnAuth, vid: str) -> str:
    v = admit(g, c, "registrar", vid)
    assert v.reply is not None and wire(v.reply[1])["code"] == "registered", v
    return str(wire(v.reply[1])["token"])


# --- registrar ------------------------------------------------------------------------------


def test_registrar_returns_a_token_once_and_persists_only_its_hash() -> None:
    g, c = gate(), conn(1)
    v = admit(g, c, "registrar", "alice")
    assert v.reply is not None
    rtype, data = v.reply[0], wire(v.reply[1])
    assert rtype == "registro" and data["status"] == "success" and data["code"] == "registered"
    token = data["token"]
    assert len(token) == 43
    assert v.persist is not None and v.persist.table == "vehicle" and v.persist.key == "alice"
    assert v.persist.value == {"sha256": token_digest(token).hex(), "registered_at": 1000.0}
    assert token not in repr(v.persist.value)
    assert v.bind and c.vehicle_id == "alice" and c.proven
    again = admit(g, conn(2), "registrar", "alice")
    assert again.reply is not None
    assert wire(again.reply[1])["code"] == "already_registered"
    assert "token" not in wire(again.reply[1]) and again.persist is None and not again.bind


def test_real_tokens_are_43_base64url_characters() -> None:
    from broker.app import new_token

    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert len(token) == 43
        assert len(base64.urlsafe_b64decode(token + "=")) == 32


def test_restore_keeps_registrations() -> None:
    g, c = gate(), conn(1)
    token = register(g, c, "alice")
    v = admit(g, c, "registrar", "alice")
    assert v.persist is None
    first = admit(gate(), conn(1), "registrar", "bob").persist
    assert first is not None and first.value is not None
    restored = gate()
    restored.restore([("vehicle", "alice", {"sha256": token_digest(token).hex()})])
    assert restored.is_registered("alice")
    assert code(admit(restored, conn(5), "autenticar", "alice", token=token)) == "authenticated"


# --- autenticar -----------------------------------------------------------------------------


def test_autenticar_binds_and_a_wrong_token_is_forbidden() -> None:
    g = gate()
    token = register(g, conn(1), "alice")
    c = conn(2)
    assert code(admit(g, c, "reserva", "alice")) == "unauthenticated"
    wrong = admit(g, c, "autenticar", "alice", token="x" * 43)
    assert code(wrong) == "forbidden" and not c.proven
    ok = admit(g, c, "autenticar", "alice", token=token)
    assert ok.reply is not None and ok.reply[0] == "autenticado"
    assert wire(ok.reply[1]) == {
        "status": "success",
        "code": "authenticated",
        "message": "Authenticated",
    }
    assert ok.bind and c.proven and c.vehicle_id == "alice"
    assert code(admit(g, c, "reserva", "alice")) == "ok"
    assert code(admit(g, c, "reserva")) == "ok"  # no id: the proven one
    assert not admit(g, c, "autenticar", "alice", token=token).bind  # already bound


def test_autenticar_for_an_unknown_id_is_forbidden() -> None:
    g = gate()
    assert code(admit(g, conn(1), "autenticar", "nobody", token="abc")) == "forbidden"


def test_five_wrong_tokens_rate_limit_the_address_for_a_minute() -> None:
    g = gate()
    token = register(g, conn(1), "alice")
    for i in range(MAX_FAILURES):
        c = conn(10 + i, "10.9.9.9")
        assert code(admit(g, c, "autenticar", "alice", token="bad", now=100.0 + i)) == "forbidden"
    late = conn(20, "10.9.9.9")
    blocked = admit(g, late, "autenticar", "alice", token=token, now=110.0)
    assert code(blocked) == "rate_limited" and not late.proven
    other = conn(21, "10.1.1.1")  # another address is not affected
    assert code(admit(g, other, "autenticar", "alice", token=token, now=110.0)) == "authenticated"
    after = admit(g, late, "autenticar", "alice", token=token, now=104.0 + BLOCK_S + 0.1)
    assert code(after) == "authenticated"


def test_failures_spread_over_more_than_a_minute_do_not_block() -> None:
    g = gate()
    token = register(g, conn(1), "alice")
    c = conn(2)
    for i in range(3 * MAX_FAILURES):
        assert code(admit(g, c, "autenticar", "alice", token="bad", now=100.0 + 20 * i)) == (
            "forbidden"
        )
    assert code(admit(g, c, "autenticar", "alice", token=token, now=500.0)) == "authenticated"


# --- registered ids without proof -----------------------------------------------------------


@pytest.mark.parametrize("rtype", ["reserva", "cancelar", "custos", "status"])
def test_registered_id_needs_proof_for_everything_but_reads(rtype: str) -> None:
    g = gate()
    register(g, conn(1), "alice")
    intruder = conn(2)
    v = admit(g, intruder, rtype, "alice")
    assert code(v) == "unauthenticated" and not v.bind


@pytest.mark.parametrize("rtype", ["bateria", "consulta", "ping"])
def test_registered_id_reads_work_without_proof_but_never_bind_pushes(rtype: str) -> None:
    g = gate()
    register(g, conn(1), "alice")
    intruder = conn(2)
    v = admit(g, intruder, rtype, "alice")
    assert code(v) == "ok" and not v.bind and not intruder.proven


# --- unregistered ids: first connection owns them ------------------------------------------


def test_unregistered_id_belongs_to_its_first_connection_while_open() -> None:
    g = gate()
    owner, other = conn(1), conn(2)
    first = admit(g, owner, "reserva", "CAR40312")
    assert code(first) == "ok" and first.bind and owner.owns
    assert code(admit(g, owner, "cancelar", "CAR40312")) == "ok"
    for rtype in ("cancelar", "custos", "status", "bateria", "ping", "registrar"):
        assert code(admit(g, other, rtype, "CAR40312")) == "forbidden", rtype
    g.closed(owner)
    assert g.owner_of("CAR40312") is None
    taken = admit(g, other, "status", "CAR40312")
    assert code(taken) == "ok" and taken.bind


def test_no_id_acts_as_car_port_and_ping_never_binds() -> None:
    g = gate()
    c = conn(7)
    assert admit(g, c, "ping") == Verdict("CAR40007")
    assert c.vehicle_id is None
    v = admit(g, c, "custos")
    assert v == Verdict("CAR40007", bind=True) and c.vehicle_id == "CAR40007"


def test_a_connection_speaks_for_one_vehicle() -> None:
    g = gate()
    c = conn(1)
    admit(g, c, "bateria", "a1")
    assert code(admit(g, c, "bateria", "b2")) == "forbidden"
    assert code(admit(g, c, "registrar", "b2")) == "forbidden"


def test_owner_may_register_its_id_then_others_must_authenticate() -> None:
    g = gate()
    c = conn(1)
    assert admit(g, c, "reserva", "EV1").bind
    v = admit(g, c, "registrar", "EV1")
    assert code(v) == "registered" and not v.bind  # already gets its pushes
    assert g.owner_of("EV1") is None
    assert code(admit(g, conn(2), "cancelar", "EV1")) == "unauthenticated"


# --- required mode --------------------------------------------------------------------------


@pytest.mark.parametrize("rtype", ["reserva", "cancelar", "custos", "status"])
def test_required_mode_refuses_unregistered_ids(rtype: str) -> None:
    g = gate(AuthMode.REQUIRED)
    v = admit(g, conn(1), rtype, "CAR1")
    assert code(v) == "unauthenticated" and not v.bind


def test_required_mode_allows_reads_and_registered_vehicles() -> None:
    g = gate(AuthMode.REQUIRED)
    c = conn(1)
    assert code(admit(g, c, "bateria", "EV1")) == "ok"
    assert code(admit(g, c, "consulta", "EV1")) == "ok"
    register(g, c, "EV1")
    assert code(admit(g, c, "reserva", "EV1")) == "ok"


# --- properties -----------------------------------------------------------------------------

VIDS = st.sampled_from(["alice", "bob", "CAR1"])
TYPES = st.sampled_from(
    ["bateria", "consulta", "reserva", "cancelar", "custos", "status", "ping", "registrar"]
)
STEP = st.tuples(st.integers(0, 3), TYPES, VIDS, st.booleans())


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(STEP, max_size=40), mode=st.sampled_from(list(AuthMode)))
def test_nobody_acts_for_a_vehicle_it_has_not_proved_or_first_claimed(
    steps: list[tuple[int, str, str, bool]], mode: AuthMode
) -> None:
    """Whatever the order of requests, connections and closes: a state change for a
    registered id needs its proof on that connection; an unregistered id is acted for
    only by its current owner; pushes bind only to a proven or owning connection."""
    g = gate(mode)
    conns = {n: conn(n) for n in range(4)}
    tokens: dict[str, str] = {}
    for n, rtype, vid, close in steps:
        c = conns[n]
        if close:
            g.closed(c)
            conns[n] = c = ConnAuth(n + 100 * len(tokens) + 10, c.address, c.default_id)
        was_registered = g.is_registered(vid)
        owner = g.owner_of(vid)
        v = admit(g, c, rtype, vid)
        if v.reply is not None and "token" in wire(v.reply[1]):
            tokens[vid] = wire(v.reply[1])["token"]
        if v.error is None and v.reply is None and rtype not in ("bateria", "consulta", "ping"):
            if was_registered:
                assert c.proven and c.vehicle_id == vid
            else:
                assert mode is AuthMode.OPEN
                assert owner in (None, c.conn)
        if v.bind:
            assert c.vehicle_id == vid and (c.proven or g.owner_of(vid) == c.conn)


# --- second round: history, registrar and autenticar limits ---------------------------------


def history_gate() -> tuple[VehicleAuth, set[str]]:
    made: set[str] = set()
    return VehicleAuth(AuthMode.OPEN, fake_token, has_history=made.__contains__), made


def test_an_ids_history_is_read_only_by_the_connection_that_made_it() -> None:
    g, made = history_gate()
    driver = conn(1)
    assert admit(g, driver, "reserva", "bob").bind
    made.add("bob")  # the core now holds a reservation, then a bill, for bob
    assert code(admit(g, driver, "custos", "bob")) == "ok"
    g.closed(driver)
    thief = conn(2, "10.9.9.9")
    assert admit(g, thief, "reserva", "bob").bind  # the id may be used again (open mode)
    assert code(admit(g, thief, "custos", "bob")) == "forbidden"
    assert code(admit(g, thief, "status", "bob")) == "forbidden"
    assert code(admit(g, thief, "registrar", "bob")) == "forbidden"
    assert not g.is_registered("bob")


def test_the_holder_may_register_its_id_with_history() -> None:
    g, made = history_gate()
    driver = conn(1)
    assert admit(g, driver, "reserva", "carol").bind
    made.add("carol")
    token = register(g, driver, "carol")
    g.closed(driver)
    again = conn(3)
    assert code(admit(g, again, "custos", "carol")) == "unauthenticated"
    assert code(admit(g, again, "autenticar", "carol", token=token)) == "authenticated"
    assert code(admit(g, again, "custos", "carol")) == "ok"


def test_restored_history_belongs_to_no_new_connection() -> None:
    g, made = history_gate()
    made.add("dave")  # billed before a restart
    c = conn(1)
    assert code(admit(g, c, "custos", "dave")) == "forbidden"
    assert code(admit(g, c, "registrar", "dave")) == "forbidden"


@pytest.mark.parametrize("vid", ["CAR1", "CAR40001", "CAR65535"])
def test_original_client_ids_cannot_be_registered(vid: str) -> None:
    g = gate()
    assert code(admit(g, conn(1), "registrar", vid)) == "forbidden"
    assert not g.is_registered(vid)


def test_registrar_is_limited_per_address() -> None:
    g = gate()
    for i in range(10):
        register(g, conn(i, "10.0.0.7"), f"new{i}")
    assert code(admit(g, conn(20, "10.0.0.7"), "registrar", "new10")) == "rate_limited"
    register(g, conn(21, "10.0.0.8"), "new11")  # another address
    later = g.admit(conn(22, "10.0.0.7"), "registrar", request("registrar", "new12"), 1061.0)
    assert code(later) == "registered"


def test_wrong_tokens_lock_one_id_from_one_address_not_the_others() -> None:
    g = gate()
    tokens = {vid: register(g, conn(i, "10.0.1.1"), vid) for i, vid in enumerate(["ann", "ben"])}
    nat = "192.0.2.1"
    for _ in range(5):
        assert code(admit(g, conn(30, nat), "autenticar", "ann", token="x" * 43)) == "forbidden"
    assert code(admit(g, conn(31, nat), "autenticar", "ann", token=tokens["ann"])) == (
        "rate_limited"
    )
    # another driver behind the same address is not locked out
    assert code(admit(g, conn(32, nat), "autenticar", "ben", token=tokens["ben"])) == (
        "authenticated"
    )
    # ann from her own address still gets in
    assert code(admit(g, conn(33, "10.0.1.1"), "autenticar", "ann", token=tokens["ann"])) == (
        "authenticated"
    )


def test_fifty_wrong_tokens_block_the_address() -> None:
    g = gate()
    token = register(g, conn(1, "10.0.1.1"), "eve")
    for i in range(50):
        admit(g, conn(40, "198.51.100.1"), "autenticar", f"guess{i}", token="y" * 43)
    v = admit(g, conn(41, "198.51.100.1"), "autenticar", "eve", token=token)
    assert code(v) == "rate_limited"
