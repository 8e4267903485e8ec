"""A short chaos run in the test suite: three minutes of faults, zero anomalies.

``make chaos`` runs the long one (CHAOS_MINUTES, default 20); docs/reliability.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.chaos.run import main

pytestmark = [pytest.mark.compose, pytest.mark.slow]


def test_three_minutes_of_faults_leave_no_anomaly(image: str, tmp_path: Path) -> None:
    minutes = float(os.environ.get("EV_CHAOS_TEST_MINUTES", "3"))
    rc = main(minutes, None, tmp_path, keep=False, drivers=3)
    assert rc != 2, "the stack could not be brought up"
    report = json.loads((tmp_path / "report.json").read_text())
    # every anomaly of state and money fails the test; a custo_final that did not reach a
    # driver whose connection stayed open is reported (make chaos fails on it) but does
    # not fail the suite: push delivery across network cuts is not yet guaranteed
    # (docs/reliability.md)
    hard = [a for a in report["anomalies"] if a["check"] != "push"]
    assert hard == [], json.dumps(hard, indent=2)[-6000:]
    for soft in report["anomalies"]:
        print(f"chaos: push anomaly (not failing the suite): {soft['detail']}")
    figures = report["figures"]
    assert sum(figures["faults"].values()) > 0 and figures["trips"] > 0
    assert figures["bills"] > 0
