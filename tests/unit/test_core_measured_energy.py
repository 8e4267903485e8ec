"""``session_complete`` with ``energia_medida_kwh``: billed from the charger's meter."""

from __future__ import annotations

import math

import pytest

from common.messages import SessionAck, SessionComplete
from tests.support.core_harness import Harness


def measured(sid: str, vid: str, kwh: float, nivel_final: float = 99.0) -> SessionComplete:
    return SessionComplete(
        session_id=sid,
        vehicle_id=vid,
        energia_kwh=kwh,
        nivel_inicial=20.0,
        nivel_final=nivel_final,
        started_at=0.0,
        ended_at=1.0,
        reason="stopped",
        energia_medida_kwh=kwh,
    )


def test_measured_energy_is_billed_instead_of_the_levels() -> None:
    h = Harness()
    h.point("CP01", preco_kwh=2.0)
    sid = h.start_charging("CAR1", capacidade_kwh=60.0)
    # the levels would say 79 % of 60 kWh; the meter says 12.345 kWh (in an hour at 50 kW)
    h.at(3600.0)
    fx = h.station("CP01", measured(sid, "CAR1", 12.345))
    done = h.published(fx, "charging.completed")[0]
    assert done["energy_kwh"] == 12.345 and done["cost"] == 24.69
    (cf,) = h.pushes(fx, "custo_final")
    # the final level the broker reports is the one the metered energy implies
    assert cf.data["nivel_final"] == round(20.0 + 12.345 / 60.0 * 100.0, 3)
    assert h.commands(fx, SessionAck)
    assert h.core.accounts()["CAR1"]["total"] == 24.69


@pytest.mark.parametrize("bad", [-0.001, 60.001, math.inf, math.nan])
def test_measured_energy_out_of_bounds_is_dropped_and_counted(bad: float) -> None:
    h = Harness()
    h.point("CP01")
    sid = h.start_charging("CAR1", capacidade_kwh=60.0)
    fx = h.station("CP01", measured(sid, "CAR1", bad))
    assert not h.pushes(fx) and not h.commands(fx, SessionAck)
    assert h.core.stats()["sessions_out_of_bounds"] == 1
    # a correct completion afterwards still bills once
    h.at(3600.0)
    fx = h.station("CP01", measured(sid, "CAR1", 40.0))
    assert h.published(fx, "charging.completed")[0]["energy_kwh"] == 40.0
