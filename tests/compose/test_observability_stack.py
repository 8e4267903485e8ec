"""The compose profile ``observability``: Prometheus (Debian's package) scrapes the broker."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest

from tests.compose.conftest import running_stack

pytestmark = [pytest.mark.compose, pytest.mark.slow]


def _query(host: str, port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://{host}:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            result: list[dict[str, Any]] = json.loads(resp.read())["data"]["result"]
            return result
    except OSError:
        return []


def test_prometheus_in_the_stack_sees_the_broker_series(image: str, prometheus_image: str) -> None:
    with running_stack(
        image,
        ("broker", "station1"),
        EV_PROMETHEUS_IMAGE=prometheus_image,
        COMPOSE_PROFILES="observability",
    ) as s:
        s.compose("up", "-d", "--no-recreate", "prometheus", timeout=240)
        s.wait_healthy("prometheus", timeout=90)
        host, port = s.published("prometheus", 9090)
        deadline = time.monotonic() + 90
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not found:
            found = _query(host, port, 'evcharge_points{state="disponivel"} >= 1')
            time.sleep(1)
        assert found, s.logs("prometheus")
        up = _query(host, port, 'up{job="evcharge-broker"}')
        assert [float(r["value"][1]) for r in up] == [1.0]
        assert s.docker("exec", s.container("prometheus"), "id", "-un").strip() == "prometheus"
