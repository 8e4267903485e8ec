"""`ev-broker sites set|list|remove` against a running broker, then on its database
once stopped (--db)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import BrokerPorts, broker_ports, start_broker

pytestmark = pytest.mark.e2e


def sites(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "sites", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def online(ports: BrokerPorts, role: str = "operator") -> list[str]:
    assert ports.creds is not None
    return [
        "--broker", "127.0.0.1", "--history-port", str(ports.history),
        "--credentials", str(ports.creds.paths[f"test-{role}"]),
    ]  # fmt: skip


def test_sites_over_the_history_socket_and_on_a_stopped_broker(tmp_path: Path) -> None:
    ports = broker_ports()
    db = str(tmp_path / "broker.db")
    broker = start_broker(ports, db)
    try:
        done = sites("set", "depot", "--limit-kw", "50", "--points", "FSA-*", *online(ports))
        assert done.returncode == 0, done.stderr
        assert "site depot: 50 kW over FSA-*" in done.stdout
        for bad, words in (
            (["--limit-kw", "nan"], "limit_kw"),
            (["--limit-kw", "10", "--min-kw", "20"], "min_kw"),
        ):
            done = sites("set", "yard", *bad, "--points", "Y*", *online(ports))
            assert done.returncode == 1 and words in done.stderr, (bad, done.stderr)
        done = sites("set", "yard", "--limit-kw", "10", "--points", "FSA-1*", *online(ports))
        assert done.returncode == 1 and "overlaps site 'depot'" in done.stderr
        done = sites(
            "set", "yard", "--limit-kw", "10", "--points", "Y*", *online(ports, "consumer")
        )
        assert done.returncode == 1 and "operator" in done.stderr
        listed = json.loads(sites("list", "--json", *online(ports, "consumer")).stdout)
        assert [(s["name"], s["limit_kw"], s["points"]) for s in listed] == [
            ("depot", 50.0, ["FSA-*"])
        ]
    finally:
        broker.stop()
    # the broker is stopped: change its database directly
    done = sites("set", "yard", "--limit-kw", "22", "--points", "Y*", "--db", db)
    assert done.returncode == 0, done.stderr
    assert sites("remove", "depot", "--db", db).returncode == 0
    done = sites("list", "--db", db)
    assert done.returncode == 0 and "yard" in done.stdout and "depot" not in done.stdout
    assert sites("remove", "nope", "--db", db).returncode == 1
    broker = start_broker(ports, db)
    try:
        listed = json.loads(sites("list", "--json", *online(ports)).stdout)
        assert [s["name"] for s in listed] == ["yard"]
        # while it runs, --db is refused (the database is locked), nothing changed
        done = sites("set", "other", "--limit-kw", "5", "--points", "Z*", "--db", db)
        assert done.returncode == 1 and "in use" in done.stderr
    finally:
        broker.stop()
