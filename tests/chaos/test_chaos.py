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
    report = json.loads((tmp_path / "report.json").read_text()) if rc != 2 else {}
    assert rc == 0, json.dumps(report.get("anomalies", []), indent=2)[-6000:]
    figures = report["figures"]
    assert sum(figures["faults"].values()) > 0 and figures["trips"] > 0
    assert figures["bills"] > 0 and figures["anomalies"] == 0
