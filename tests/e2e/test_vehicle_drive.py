"""vehicle.drive: point ranking (pure) and the trip against a real protocol server."""

from __future__ import annotations

import asyncio

from tests.support.vehicle_server import ProtocolServer, run_with_server
from vehicle.client import VehicleClient
from vehicle.drive import DriveConfig, rank_points, run_drive, score, travel_minutes


def point(pid: str, km: float, wait: float, estado: str = "disponivel") -> dict[str, object]:
    return {"id": pid, "distance": km, "espera_estimada_min": wait, "estado": estado}


def test_travel_time_and_score() -> None:
    assert travel_minutes(point("A", 10, 0), kmh=60) == 10.0
    assert score(point("A", 10, 5), kmh=60) == 15.0
    assert travel_minutes({"id": "X"}, kmh=60) == 0.0


def test_rank_prefers_distance_plus_wait_and_skips_unusable_points() -> None:
    points = [
        point("NEAR_BUSY", 1, 60),
        point("FAR_FREE", 20, 0),  # 30 min at 40 km/h
        point("MID", 5, 10),  # 7.5 + 10
        point("OFF", 0.1, 0, "offline"),
        point("FAULT", 0.1, 0, "indisponivel"),
    ]
    assert [p["id"] for p in rank_points(points, kmh=40)] == ["MID", "FAR_FREE", "NEAR_BUSY"]
    ranked = rank_points(points, kmh=40, excluded=frozenset({"MID"}))
    assert [p["id"] for p in ranked] == ["FAR_FREE", "NEAR_BUSY"]


def test_drive_skips_a_full_point_and_returns_the_bill() -> None:
    async def body(server: ProtocolServer) -> None:
        lines: list[str] = []
        cfg = DriveConfig(-12.9, -38.4, battery=15, target=80, speed=6000)
        async with VehicleClient("127.0.0.1", server.port, "DRIVE1") as c:
            bill = await asyncio.wait_for(run_drive(c, cfg, lines.append), 8)
        assert bill["cost"] == 48.0 and bill["session_id"] == "S1"
        types = [r["type"] for r in server.requests]
        assert types[:3] == ["bateria", "reserva", "reserva"] and "chegada" in types
        assert [r["data"]["id_ponto_recarga"] for r in server.requests[1:3]] == ["FULL", "CP01"]
        chegada = next(r for r in server.requests if r["type"] == "chegada")["data"]
        assert chegada["nivel_bateria"] == 15 and chegada["nivel_carregar"] == 80
        assert chegada["metodo_pagamento"] == "Pix"
        assert any("FULL refused: queue_full" in line for line in lines)
        assert any("Our turn at CP01" in line for line in lines)

    run_with_server(body)


def test_drive_chooses_again_after_the_reservation_expired() -> None:
    async def body(server: ProtocolServer) -> None:
        lines: list[str] = []
        cfg = DriveConfig(-12.9, -38.4, speed=6000, retry_s=0.05, payment="Cartão de crédito")
        async with VehicleClient("127.0.0.1", server.port, "DRIVEX1") as c:
            bill = await asyncio.wait_for(run_drive(c, cfg, lines.append), 8)
        assert bill["session_id"] == "S1"
        assert server.reservations["DRIVEX1"] == 2
        assert any("reserva_expirada" in line for line in lines)
        chegada = next(r for r in server.requests if r["type"] == "chegada")["data"]
        assert chegada["metodo_pagamento"] == "Cartão de crédito"

    run_with_server(body)
