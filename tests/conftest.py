"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import BrokerPorts, Proc, broker_ports, start_broker_on_free_ports


@pytest.fixture
def ports() -> BrokerPorts:
    """Fresh free ports for one broker."""
    return broker_ports()


@pytest.fixture
def broker(tmp_path: Path, ports: BrokerPorts) -> Iterator[tuple[Proc, BrokerPorts]]:
    """A real ``ev-broker serve`` process on free ports with a SQLite file in tmp_path.

    Uses short windows so that tests run fast: offline after 1.5 s, grace 3 s.
    """
    proc = start_broker_on_free_ports(
        ports, str(tmp_path / "broker.db"), "--offline-after", "1.5", "--offline-grace", "3"
    )
    try:
        yield proc, ports
    finally:
        proc.stop()
