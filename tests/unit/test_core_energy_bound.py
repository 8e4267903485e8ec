"""No session is billed more than its battery can take (security contract, second round).

The bound is ``capacidade_kwh x (100 - nivel_inicial) / 100`` on every path that
bills (a completion, a fault, a reboot, a silent station), and for a metered
(real-time) charger also power x wall time + 10 %. Excess is counted, never billed.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from broker.core.sessions import battery_room_kwh, bounded_energy, energy_bound_kwh
from common.messages import SessionAck, SessionComplete
from tests.support.core_harness import Harness


def charging(h: Harness, vid: str = "CAR1") -> str:
    h.point("CP01", preco_kwh=2.0)
    return h.start_charging(vid, battery=20, target=80, capacidade_kwh=60.0)


# (ignored below) a list of effects of any kind
def billed(h: Harness, fx: list) -> float:  # type: ignore[type-arg]
    (done,) = h.published(fx, "charging.completed")
    return float(done["energy_kwh"])


def test_the_pure_bound() -> None:
    assert battery_room_kwh(20.0, 60.0) == Decimal(48)
    assert battery_room_kwh(100.0, 60.0) == 0 and battery_room_kwh(float("nan"), 60.0) == 0
    assert energy_bound_kwh(20.0, 60.0) == Decimal(48)
    # 22 kW for 30 min is 11 kWh; +10 %
    assert energy_bound_kwh(20.0, 60.0, power_kw=22.0, wall_s=1800.0) == Decimal("12.1")
    assert energy_bound_kwh(20.0, 60.0, power_kw=22.0, wall_s=float("inf")) == 0
    assert bounded_energy(Decimal(1000), Decimal(48)) == (Decimal(48), Decimal(952))
    assert bounded_energy(Decimal(10), Decimal(48)) == (Decimal(10), Decimal(0))


def test_datagram_energy_then_a_new_boot_bills_at_most_the_battery() -> None:
    h = Harness()
    sid = charging(h)
    h.dgram("CP01", estado="carregando", session_id=sid, vehicle_id="CAR1", energia_kwh=1000.0)
    fx = h.dgram("CP01", estado="disponivel", boot_id="boot-new")
    assert billed(h, fx) == 48.0
    assert h.core.accounts()["CAR1"]["total"] == 96.0
    stats = h.core.stats()
    assert stats["sessions_energy_bounded"] == 1 and stats["energy_excess_wh"] == 952_000
    (cf,) = h.pushes(fx, "custo_final")
    assert cf.data["nivel_final"] == 100.0


def test_a_station_silent_past_the_grace_is_billed_at_most_the_battery() -> None:
    h = Harness()
    sid = charging(h)
    h.dgram("CP01", estado="carregando", session_id=sid, vehicle_id="CAR1", energia_kwh=700.0)
    # (ignored below) a list of effects of any kind
    fx: list = []  # type: ignore[type-arg]
    for _ in range(400):  # the offline window, then the grace
        fx = h.tick(1.0)
        if h.published(fx, "charging.completed"):
            break
    assert billed(h, fx) == 48.0
    assert h.core.stats()["sessions_energy_bounded"] == 1


def test_a_fault_completion_reporting_more_than_the_room_is_cut() -> None:
    h = Harness()
    sid = charging(h)
    fx = h.complete("CP01", sid, "CAR1", 20.0, 20.0, energy=59.0, reason="fault")
    assert billed(h, fx) == 48.0
    assert h.commands(fx, SessionAck)


def test_a_completion_with_another_initial_level_is_refused() -> None:
    h = Harness()
    sid = charging(h)
    fx = h.complete("CP01", sid, "CAR1", 0.0, 100.0, energy=60.0)
    assert not h.published(fx, "charging.completed") and not h.commands(fx, SessionAck)
    assert h.core.stats()["sessions_out_of_bounds"] == 1
    fx = h.complete("CP01", sid, "CAR1", 20.0, 80.0)  # the real one still bills
    assert billed(h, fx) == 36.0


@pytest.mark.parametrize(("wall_s", "expected"), [(60.0, 0.917), (3600.0, 40.0)])
def test_a_metered_charger_is_bounded_by_power_and_wall_time(
    wall_s: float, expected: float
) -> None:
    h = Harness()
    sid = charging(h)  # 50 kW by default
    h.at(wall_s)
    msg = SessionComplete(
        session_id=sid, vehicle_id="CAR1", energia_kwh=40.0, nivel_inicial=20.0,
        nivel_final=86.7, started_at=0.0, ended_at=1.0, reason="stopped",
        energia_medida_kwh=40.0,
    )  # fmt: skip
    fx = h.station("CP01", msg)
    assert billed(h, fx) == expected
