"""Every reply and push type a real broker writes, checked against docs/schema/reply and push.

One broker process, raw TCP vehicles recording every line they read, a raw zmq
station and an operator on the history port: together they make the broker
write each reply type (accepted and refused) and each push once at least.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from common.messages import PUSH_TYPES
from common.replies import PUSH_DATA, REPLY_DATA
from tests.e2e.test_broker_availability import history
from tests.e2e.test_broker_vehicles import LAT, LON, online_point, reserve
from tests.support.procs import broker_ports, start_broker
from tests.support.raw_clients import WAIT_S, Vehicle, keepalive, station, zmq_ctx

pytestmark = pytest.mark.e2e

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schema"
HERE = {"latitude": LAT, "longitude": LON}


class Recorder(Vehicle):
    """A raw vehicle that keeps every line it reads."""

    def __init__(self, port: int, vehicle_id: str | None = None) -> None:
        super().__init__(port, vehicle_id)
        self.seen: list[dict[str, Any]] = []

    def recv(self, timeout: float = WAIT_S) -> dict[str, Any]:
        msg = super().recv(timeout)
        self.seen.append(msg)
        return msg


@contextmanager
def recorders(port: int, count: int) -> Iterator[list[Recorder]]:
    vs = [Recorder(port) for _ in range(count)]
    try:
        yield vs
    finally:
        for v in vs:
            v.close()


def _schema(message: dict[str, Any]) -> dict[str, Any]:
    folder = "push" if message["type"] in PUSH_TYPES else "reply"
    schema: dict[str, Any] = json.loads(
        (SCHEMAS / folder / f"{message['type']}.schema.json").read_text()
    )
    return schema


def test_every_reply_and_push_of_a_real_broker_fits_its_schema(tmp_path: Path) -> None:
    ports = broker_ports()
    proc = start_broker(ports, str(tmp_path / "b.db"), "--hold-minutes", "0.02")
    try:
        with (
            zmq_ctx() as ctx,
            station(ctx, ports.station, "CP01") as st,
            keepalive(ports.status, "CP01", "CP02"),
            recorders(ports.vehicle, 5) as (a, b, c, d, e),
        ):
            st.hello()
            st.recv_type("welcome")
            online_point(ports, "CP01")
            online_point(ports, "CP02")
            assert a.request("ping", {}, id=1)["type"] == "pong"
            a.request("bateria", {"id_veiculo": "CARA", "nivel_bateria": 50, "localizacao": HERE})
            a.request("consulta", {"id_veiculo": "CARA", "localizacao": HERE})
            assert reserve(a, "CARA")["data"]["code"] == "reserved"
            a.push("sua_vez")
            assert reserve(b, "CARB")["data"]["code"] == "reserved"
            assert reserve(b, "CARB")["data"]["code"] == "already_queued"
            assert reserve(b, "CARB", "NOPE")["data"]["code"] == "unknown_point"
            assert b.request("status", {"id_veiculo": "CARB"})["data"]["reserva"]["posicao"] == 2
            cancel = {"id_veiculo": "CARB", "id_ponto_recarga": "CP02"}
            assert b.request("cancelar", cancel)["data"]["code"] == "no_reservation"
            arrive = {"id_ponto_recarga": "CP01", "nivel_bateria": 20, "nivel_carregar": 80}
            # (ignored below) the request TypedDict narrows metodo_pagamento to the wire literals
            arrive["metodo_pagamento"] = "Pix"  # type: ignore[assignment]
            b.send({"type": "chegada", "data": {"id_veiculo": "CARB", **arrive}})
            assert b.reply()["data"]["code"] == "not_your_turn"
            a.send({"type": "chegada", "data": {"id_veiculo": "CARA", **arrive}})
            start = st.recv_type("start")
            st.send({"type": "ack", "cmd_id": start["cmd_id"], "ok": True})
            assert a.reply()["data"]["code"] == "started"
            assert a.request("status", {"id_veiculo": "CARA"})["data"]["sessao"]["estado"] == (
                "carregando"
            )
            stop = {"id_veiculo": "CARA", "id_ponto_recarga": "CP01"}
            assert a.request("parar", stop)["data"]["code"] == "stopping"
            st.recv_type("stop")
            st.send(
                {
                    "type": "session_complete",
                    "session_id": start["session_id"],
                    "vehicle_id": "CARA",
                    "energia_kwh": 12.0,
                    "nivel_inicial": 20,
                    "nivel_final": 40,
                    "started_at": time.time() - 60,
                    "ended_at": time.time(),
                    "reason": "stopped",
                }
            )
            a.push("custo_final")
            a.push("encerramento")
            assert a.request("custos", {"id_veiculo": "CARA"})["data"]["total"] == 24.0
            b.push("sua_vez")
            b.push("reserva_expirada", timeout=10)
            token = c.request("registrar", {"id_veiculo": "CARC"})["data"]["token"]
            assert d.request("registrar", {"id_veiculo": "CARC"})["data"]["code"] == (
                "already_registered"
            )
            auth = d.request("autenticar", {"id_veiculo": "CARC", "token": token})
            assert auth["data"]["code"] == "authenticated"
            a.send(b"not json\n")
            assert a.reply()["data"]["code"] == "bad_json"
            assert a.request("teleport", {})["data"]["code"] == "unknown_type"
            assert a.request("reserva", {"id_veiculo": "CARA"})["data"]["field"] == (
                "id_ponto_recarga"
            )
            assert reserve(e, "CARE", "CP02")["data"]["code"] == "reserved"
            with history(ports) as ask:
                off = {"point_id": "CP02", "available": False, "reason": "maintenance"}
                assert ask({"op": "set_availability", **off})["ok"] is True
            e.push("reserva_cancelada")
            lines = [msg for v in (a, b, c, d, e) for msg in v.seen]
    finally:
        assert proc.stop() == 0
    envelope = json.loads((SCHEMAS / "reply" / "envelope.schema.json").read_text())
    for msg in lines:
        jsonschema.validate(msg, _schema(msg))
        jsonschema.validate(msg, envelope)
    assert {msg["type"] for msg in lines} == {*REPLY_DATA, *PUSH_DATA}
