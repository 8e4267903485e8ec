"""ops/prometheus and ops/grafana against a real broker and a real Prometheus server.

Prometheus (Debian's ``prometheus`` package, as the compose profile
``observability`` uses it) runs ops/prometheus/prometheus.yml with the target
pointed at a broker on free ports, and must see the broker's series; every
metric the Grafana dashboard queries must be one the broker exports.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import ROOT, BrokerPorts, Proc, free_port
from tests.support.raw_clients import http_get, send_status, wait_for

pytestmark = pytest.mark.e2e

SCRAPE_CONFIG = ROOT / "ops" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "evcharge-dashboard.json"


def _prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None
    )
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("prometheus (Debian package) is needed in CI")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    return found


@contextlib.contextmanager
def prometheus(tmp_path: Path, broker_http: int) -> Iterator[int]:
    """A real Prometheus scraping the broker every second with the shipped config."""
    binary = _prometheus_binary()
    config = SCRAPE_CONFIG.read_text()
    assert '"broker:8090"' in config
    config = config.replace('"broker:8090"', f'"127.0.0.1:{broker_http}"')
    config = config.replace("scrape_interval: 5s", "scrape_interval: 1s")
    (tmp_path / "prometheus.yml").write_text(config)
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    popen = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        if popen.poll() is None:
            os.kill(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)
        log.close()


def query(port: int, expr: str) -> list[dict[str, Any]]:
    try:
        status, body = http_get(port, "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    except OSError:  # not listening yet
        return []
    if status != 200:
        return []
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def test_prometheus_sees_the_broker_series(
    broker: tuple[Proc, BrokerPorts], tmp_path: Path
) -> None:
    _, ports = broker
    send_status(ports.status, "PROM01")
    with prometheus(tmp_path, ports.http) as port:
        wait_for(
            lambda: query(port, 'up{job="evcharge-broker"} == 1'),
            timeout=60,
            what="Prometheus scraping the broker",
            interval=0.5,
        )
        wait_for(
            lambda: query(port, "evcharge_points_known >= 1"),
            timeout=30,
            what="evcharge_points_known in Prometheus",
            interval=0.5,
        )
        series = query(port, 'count by (__name__) ({__name__=~"evcharge_.+"})')
        names = {s["metric"]["__name__"] for s in series}
        assert {"evcharge_events_total", "evcharge_points", "evcharge_last_event_seq"} <= names
        started = query(port, 'evcharge_events_total{topic="broker.started"}')
        assert [float(s["value"][1]) for s in started] == [1.0]


def dashboard_metrics() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert exprs, "the dashboard queries nothing"
    names = set()
    for expr in exprs:
        for name in re.findall(r"\bevcharge_[a-z_]+", expr):
            names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def test_the_dashboard_queries_only_exported_metrics(broker: tuple[Proc, BrokerPorts]) -> None:
    _, ports = broker
    send_status(ports.status, "DASH01")
    text = http_get(ports.http, "/metrics")[1]
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    wanted = dashboard_metrics()
    assert wanted - exported == set()
    # the business figures are on the dashboard
    assert {
        "evcharge_energy_delivered_kwh_total",
        "evcharge_revenue_total",
        "evcharge_sessions_completed_total",
        "evcharge_sessions_active",
        "evcharge_vehicles_queued",
        "evcharge_points",
        "evcharge_request_duration_seconds",
    } <= wanted
