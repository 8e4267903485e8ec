"""A station cannot bill more than the battery (security contract, second round).

The attack: a station with a valid key sent signed datagrams with ``energia_kwh:
1000`` for a 60 kWh vehicle's session, then one with a new ``boot_id``: the driver
was billed 1000 kWh. A completion reporting ``nivel_inicial: 0`` for a session that
started at 20 % was billed 60 kWh.
"""

from __future__ import annotations

import pytest

from tests.e2e.test_security_attacks import (  # noqa: F401 (the fixture)
    Scene,
    completion,
    finish_legitimately,
    scene,
    session,
    statement,
)
from tests.support.raw_clients import http_get, metric, wait_for

pytestmark = pytest.mark.e2e


def test_datagrams_and_a_new_boot_bill_at_most_the_battery(scene: Scene) -> None:  # noqa: F811
    with session(scene, "VICTIM5") as (st, car, sid):
        st.datagram("carregando", vehicle_id="VICTIM5", session_id=sid, energia_kwh=1000.0)
        st.datagram("disponivel", boot_id="boot-2")
        bill = car.push("custo_final", timeout=10)["data"]
        assert bill["session_id"] == sid
        assert bill["energia_kwh"] == 48.0 and bill["cost"] == 72.0  # 60 x 80 % at 1.5
        _, text = http_get(scene.ports.http, "/metrics")
        assert metric(text, "evcharge_energy_unbilled_wh_total") == 952_000
    scene.restart_after_kill9()
    assert statement(scene, "VICTIM5")["total"] == 72.0


def test_a_completion_with_another_initial_level_is_refused(scene: Scene) -> None:  # noqa: F811
    with session(scene, "VICTIM6") as (st, car, sid):
        st.send(completion(sid, "VICTIM6", nivel_inicial=0.0, nivel_final=100.0, energia_kwh=60.0))
        wait_for(lambda: scene.rejected("stations", "figures") >= 1, what="the refusal")
        assert car.ask("custos")["data"]["sessoes"] == []
        finish_legitimately(scene, st, car, sid)  # 20 -> 80 %: 36 kWh, 54.00
