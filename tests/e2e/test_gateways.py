"""Vehicle gateways end to end: real core, real gateways, real sockets.

* one connection's reads and writes, pipelined, keep their order and read their writes
  (``serve --gateways 1``: the supervised local gateway);
* kill -9 of the core while 50 vehicles reserve and arrive: every request answered
  once (its committed reply or ``unavailable``), connections kept, nothing lost;
* kill -9 of one of three gateways: its vehicles reconnect to the others, never
  ``forbidden``, their reservations kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.procs import broker_ports, free_port, start_broker
from tests.support.raw_clients import (
    LAT,
    LON,
    send_status,
    vehicle,
    wait_for,
)

pytestmark = pytest.mark.e2e

HERE = {"latitude": LAT, "longitude": LON}


def _sees(port: int, count: int, prefix: str) -> None:
    """Wait until a vehicle on ``port`` sees ``count`` online points named ``prefix...``."""
    with vehicle(port) as v:

        def seen() -> bool:
            reply = v.request("consulta", {"localizacao": HERE, "limite": 100})
            return (
                sum(
                    1
                    for p in reply["data"]
                    if p["id"].startswith(prefix) and p["estado"] == "disponivel"
                )
                >= count
            )

        wait_for(seen, timeout=30, what=f"{count} points {prefix}* online")


def test_reads_and_writes_on_one_connection_keep_order_and_read_their_writes(
    tmp_path: Path,
) -> None:
    ports = broker_ports()
    core = start_broker(
        ports, str(tmp_path / "b.db"), "--gateways", "1", "--gateway-port", str(free_port())
    )
    try:
        assert any("(1 gateways)" in line for line in core.lines)
        send_status(ports.status, "CP01", latitude=LAT, longitude=LON)
        _sees(ports.vehicle, 1, "CP01")
        with vehicle(ports.vehicle, "V1") as v:
            v.ask("status")  # binds V1 (the core decides who a connection speaks for)
            for round_ in range(10):
                base = round_ * 6
                where = {"localizacao": HERE, "id_veiculo": "V1"}
                batch = [
                    ("reserva", {"id_veiculo": "V1", "id_ponto_recarga": "CP01"}),
                    ("consulta", where),
                    ("bateria", {**where, "nivel_bateria": 50, "limite": 5}),
                    ("cancelar", {"id_veiculo": "V1", "id_ponto_recarga": "CP01"}),
                    ("consulta", where),
                    ("ping", {}),
                ]
                v.send(
                    "".join(
                        json.dumps({"type": t, "data": d, "id": base + i}) + "\n"
                        for i, (t, d) in enumerate(batch)
                    )
                )
                replies = [v.reply() for _ in batch]
                assert [r["id"] for r in replies] == [base + i for i in range(6)], replies
                assert replies[0]["data"]["code"] == "reserved", replies[0]
                (seen,) = [p for p in replies[1]["data"] if p["id"] == "CP01"]
                assert seen["queue_size"] == 1 and seen["estado"] == "reservado", (round_, seen)
                (seen,) = [p for p in replies[2]["data"]["pontos"] if p["id"] == "CP01"]
                assert seen["queue_size"] == 1 and seen["espera_estimada_min"] > 0, seen
                assert replies[3]["data"]["code"] == "cancelled", replies[3]
                (seen,) = [p for p in replies[4]["data"] if p["id"] == "CP01"]
                assert seen["queue_size"] == 0 and seen["estado"] == "disponivel", seen
                assert replies[5]["type"] == "pong"
    finally:
        core.stop()
