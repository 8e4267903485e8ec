"""Reservation records, the deadline formula and positions."""

from __future__ import annotations

from broker.core.queues import Reservation, position_of, turn_deadline


def test_deadline_formula() -> None:
    r = Reservation("r1", "V", "P", created_at=100.0, eta_s=600.0, order=1)
    assert turn_deadline(r, 150.0, 60.0) == 760.0  # eta later than the turn
    assert turn_deadline(r, 1000.0, 60.0) == 1060.0  # turn later than the eta


def test_record_round_trip_and_view() -> None:
    r = Reservation("r1", "V", "P", 100.0, 60.0, 7, turn_started_at=120.0, deadline=760.0)
    back = Reservation.from_record(r.record())
    assert back.record() == r.record()
    v = r.view(1)
    assert v.posicao == 1 and v.turno is True and v.expira_em is not None
    assert v.expira_em.endswith("Z") and v.tempo_estimado == 1.0


def test_position_of() -> None:
    q = [Reservation(f"r{i}", f"V{i}", "P", 0.0, 0.0, i) for i in range(3)]
    assert [position_of(q, v) for v in ("V0", "V2", "X")] == [1, 3, 0]
