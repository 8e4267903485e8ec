"""The core's gateways edge without sockets (broker/edges/gateways_zmq.py).

A fake host stands for the app: requests go to a real :class:`broker.core.Core`
through the same gate, and what the edge would send is captured.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.core import Core, CoreConfig
from broker.core.effects import Effect, Persist, Reply, needs_commit
from broker.core.vehicle_auth import AuthMode, VehicleAuth
from broker.edges.gateways_zmq import (
    KEEP_REPLIES_S,
    REPLY_TABLE,
    GatewaysEdge,
    load_committed,
    load_starts,
    reply_key,
)
from broker.edges.reply_order import Slot
from broker.gateway import wire
from common.messages import StatusDatagram, VehicleRequest
from tests.support.core_harness import T0

WELCOME = wire.Welcome("boot-1", 0, 5, 20.0, 25.0)


class Host:
    """The app as the edge sees it: the core, the gate, one flush per request."""

    def __init__(self) -> None:
        self.core = Core(CoreConfig(), lambda p: f"{p}-x")
        self.core.start(T0)
        self.auth = VehicleAuth(AuthMode.OPEN, lambda: "token")
        self.edge: GatewaysEdge | None = None
        self.persisted: list[Persist] = []
        self.bound: list[tuple[str, Any]] = []

    @property
    def last_seq(self) -> int:
        return self.core.last_seq

    def vehicle_request(
        self,
        conn: int,
        vehicle_id: str,
        request: VehicleRequest,
        slot: Slot,
        address: str | None = None,
    ) -> None:
        fx: list[Effect] = self.core.handle_request(conn, vehicle_id, request, T0, address)
        slots = {id(e): slot for e in fx if isinstance(e, Reply) and e.conn == conn}
        assert self.edge is not None
        if needs_commit(fx):  # as the app's flush: only a batch that changes something
            self.persisted += self.edge.commit_replies(fx, slots, T0)
        for e in fx:
            if isinstance(e, Reply):
                self.edge.deliver_reply(e, slots.get(id(e)))

    def vehicle_record_reply(self, persist: Persist, reply: Reply, slot: Slot) -> None:
        raise AssertionError("not used here")

    def bind(self, vehicle_id: str, conn: Any) -> None:
        conn.vehicle_id = vehicle_id
        self.bound.append((vehicle_id, conn))

    def unbind(self, vehicle_id: str, conn: Any) -> None:
        self.bound.remove((vehicle_id, conn))

    def battery(self, vehicle_id: str, level: float, latitude: float, longitude: float) -> None:
        pass

    def start_in_progress(self, vehicle_id: str) -> tuple[str, str] | None:
        return self.core.start_in_progress(vehicle_id)

    def session_started(self, vehicle_id: str, session_id: str) -> bool:
        return self.core.session_started(vehicle_id, session_id)

    def persist(self, records: list[Persist]) -> None:
        self.persisted += records

    def reject(self, edge: str, reason: str, detail: str = "") -> None:
        pass


def _edge(
    committed: dict[str, tuple[bytes, float]] | None = None,
) -> tuple[Host, GatewaysEdge, list[Any]]:
    host = Host()
    # (ignored below) no socket: the edge is driven by hand
    edge = GatewaysEdge(None, "tcp://x", host, WELCOME, committed or {})  # type: ignore[arg-type]
    host.edge = edge
    sent: list[Any] = []
    # (ignored below) the send is replaced to capture what would go out
    edge._send_raw = lambda rid, msg: sent.append(msg)  # type: ignore[method-assign]
    return host, edge, sent


def _frames(message: Any, gateway: bytes = b"gw-a") -> list[bytes]:
    return [gateway, wire.encode(message)]


def _forward(rid: int, rtype: str, data: dict[str, Any], conn: int = 1) -> wire.Forward:
    body = msgspec.json.encode({"type": rtype, "data": data, "id": rid})
    return wire.Forward(conn, rid, "10.0.0.1", "CAR1", body)


def test_a_request_before_hello_gets_a_welcome_and_is_not_handled() -> None:
    _host, edge, sent = _edge()
    edge.handle_frames(_frames(_forward(1, "ping", {})))
    assert [type(m) for m in sent] == [wire.Welcome]


def test_a_change_commits_its_reply_and_a_resend_gets_that_reply() -> None:
    host, edge, sent = _edge()
    edge.handle_frames(_frames(wire.Hello("gw-a", [])))
    edge.handle_frames(_frames(_forward(1, "status", {"id_veiculo": "V1"})))
    answers = [m for m in sent if isinstance(m, wire.Answer)]
    assert answers[-1].bound == wire.Bound("V1", False, True)
    assert not host.persisted  # a query changes nothing: nothing committed
    # a cancel of nothing is a refusal (nothing changed); a ping: both answered, not kept
    edge.handle_frames(_frames(_forward(2, "cancelar", {"id_ponto_recarga": "P"})))
    assert not host.persisted
    # a low battery report publishes an event: its reply is committed with it
    bat = {"nivel_bateria": 5, "localizacao": {"latitude": 0.0, "longitude": 0.0}}
    edge.handle_frames(_frames(_forward(3, "bateria", bat)))
    (record,) = host.persisted
    assert record.table == REPLY_TABLE and record.key == reply_key("gw-a", 1, 3)
    first = [m for m in sent if isinstance(m, wire.Answer)][-1]
    # the core restarts: the table is loaded from the store; the gateway resends rid 3
    records = [(r.table, r.key, r.value) for r in host.persisted]
    host2, edge2, sent2 = _edge(load_committed(records))
    edge2.handle_frames(_frames(wire.Hello("gw-a", [])))
    edge2.handle_frames(_frames(_forward(3, "bateria", bat)))
    (again,) = [m for m in sent2 if isinstance(m, wire.Answer)]
    assert again.payload == first.payload and again.rid == 3
    assert host2.core.last_seq == 1  # not applied again (only broker.started)


def test_committed_replies_are_pruned_by_age() -> None:
    committed = {"old": (b"x\n", T0 - KEEP_REPLIES_S - 1), "new": (b"y\n", T0)}
    _host, edge, _sent = _edge(committed)
    gone = edge.prune(T0)
    assert [(p.table, p.key, p.value) for p in gone] == [(REPLY_TABLE, "old", None)]
    assert list(committed) == ["new"]


def test_a_silent_gateway_releases_its_ids_and_a_parked_request_is_then_admitted() -> None:
    host, edge, sent = _edge()
    edge.handle_frames(_frames(wire.Hello("gw-a", [])))
    edge.handle_frames(_frames(_forward(1, "status", {"id_veiculo": "V1"})))
    assert [v for v, _ in host.bound] == ["V1"]
    edge.handle_frames(_frames(wire.Hello("gw-b", []), b"gw-b"))
    # V1 reconnects through gw-b while gw-a's connection still holds the id: parked
    edge.handle_frames(_frames(_forward(1, "status", {"id_veiculo": "V1"}), b"gw-b"))
    assert not [m for m in sent if isinstance(m, wire.Answer) and m.rid == 1][1:]
    # gw-a is found dead: its ids are free and the parked request is admitted
    edge._drop_peer(edge.peers[b"gw-a"])
    answer = [m for m in sent if isinstance(m, wire.Answer)][-1]
    assert b"status_veiculo" in answer.payload and answer.bound == wire.Bound("V1", False, True)


def test_a_parked_request_is_refused_when_the_holder_is_alive_and_keeps_the_id() -> None:
    _host, edge, sent = _edge()
    edge.handle_frames(_frames(wire.Hello("gw-a", [])))
    edge.handle_frames(_frames(_forward(1, "status", {"id_veiculo": "V1"})))
    edge.handle_frames(_frames(wire.Hello("gw-b", []), b"gw-b"))
    edge.handle_frames(_frames(_forward(1, "status", {"id_veiculo": "V1"}), b"gw-b"))
    edge.handle_frames(_frames(wire.Beat()))  # gw-a is alive and did not close it
    answer = [m for m in sent if isinstance(m, wire.Answer)][-1]
    assert answer.outcome == "forbidden" and b"forbidden" in answer.payload


def test_a_resent_chegada_whose_start_the_core_resolved_meanwhile_is_not_started_again() -> None:
    host, edge, sent = _edge()
    fx = host.core.handle_datagram(StatusDatagram(id="CP1", latitude=0.0, longitude=0.0), T0)
    assert fx
    edge.handle_frames(_frames(wire.Hello("gw-a", [])))
    arrive = {
        "id_veiculo": "V1",
        "id_ponto_recarga": "CP1",
        "nivel_bateria": 20,
        "nivel_carregar": 40,
        "metodo_pagamento": "Pix",
    }
    edge.handle_frames(_frames(_forward(1, "chegada", arrive)))
    assert not [m for m in sent if isinstance(m, wire.Answer)]  # waits for the station
    (marker,) = [p for p in host.persisted if p.key == reply_key("gw-a", 1, 1)]
    assert marker.value is not None and marker.value["vehicle"] == "V1"
    # the core restarts; its start is gone (failed meanwhile): the resend is answered
    records = [(p.table, p.key, p.value) for p in host.persisted]
    host2, edge2, sent2 = _edge(load_committed(records))
    edge2.starts = load_starts(records)
    edge2.handle_frames(_frames(wire.Hello("gw-a", [])))
    edge2.handle_frames(_frames(_forward(1, "chegada", arrive)))
    (answer,) = [m for m in sent2 if isinstance(m, wire.Answer)]
    assert answer.outcome == "point_unreachable" and b"chegada_response" in answer.payload
    assert host2.core.start_in_progress("V1") is None  # not started a second time
