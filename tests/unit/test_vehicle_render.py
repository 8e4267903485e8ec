"""vehicle.render: tables and lines show the figures a driver needs."""

from __future__ import annotations

import io

from rich.console import Console, RenderableType

from tests.support.vehicle_server import BILL, POINT, STATEMENT
from vehicle import render


def text(renderable: RenderableType | str) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(renderable)
    # (ignored below) the console writes to a StringIO here (typed as IO[str])
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def test_points_table() -> None:
    offline = {**POINT, "id": "CP02", "estado": "offline", "queue_size": 2, "distance": 7.5}
    out = text(render.points_table([POINT, offline]))
    for piece in ("CP01", "1.234", "disponivel", "0/5", "50.0", "2.00", "CP02", "offline", "2/5"):
        assert piece in out
    assert "no points found" in text(render.points_table([]))


def test_bill_and_statement() -> None:
    bill = text(render.bill_table(BILL))
    for piece in ("S1", "CP01", "24.000 kWh", "20% -> 60%", "R$ 48.00", "Pix", "1800 s"):
        assert piece in bill
    statement = text(render.statement_table(STATEMENT))
    assert "CAR1" in statement and "R$ 48.00" in statement and "total" in statement
    empty = {"vehicle_id": "CAR2", "moeda": "BRL", "total": "0.00", "sessoes": []}
    assert "no sessions yet" in text(render.statement_table(empty))


def test_lines() -> None:
    reserved = {"id_ponto_recarga": "CP01", "posicao": 2, "reservation_id": "R9", "expira_em": "T"}
    assert (
        render.reservation_line(reserved) == "Reserved CP01, position 2, reservation R9, expires T"
    )
    started = {"code": "started", "message": "ok", "session_id": "S1"}
    assert render.response_line(started) == "started: ok (session S1)"
    assert render.status_lines({"reserva": None, "sessao": None}) == [
        "reservation: none",
        "session: none",
    ]
    assert render.status_lines({"reserva": {"posicao": 1}, "sessao": None})[0] == (
        "reservation: posicao=1"
    )
    assert "Your turn at CP01" in render.push_line("sua_vez", {"id_ponto_recarga": "CP01"})
    assert "R$ 48.00" in render.push_line("custo_final", BILL)
    assert "expired" in render.push_line("reserva_expirada", {"id_ponto_recarga": "CP01"})
    cancelled = render.push_line("reserva_cancelada", {"motivo": "point_offline"})
    assert "point_offline" in cancelled
    assert render.money("12.345") == "R$ 12.35" and render.money(0.1 + 0.2) == "R$ 0.30"
    assert render.money(None) == "R$ -" and render.money("abc") == "R$ -"
