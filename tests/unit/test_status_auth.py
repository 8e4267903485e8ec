"""The status edge with security: signed datagrams, the ts window, replays, legacy points.

The edge hands datagrams to a real core, which owns the ordering rule (stale, replayed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.auth import Keyring, Rejections, Security
from broker.core import Core, CoreConfig
from broker.core.effects import Rejected
from broker.credentials import CredentialTable, broker_keys, issue
from broker.edges.status_udp import StatusServer
from broker.metrics import BrokerMetrics
from common.credentials import Credential, load_credential, sign_datagram
from common.messages import StatusDatagram

NOW = 1_800_000_000.0


class Edge:
    def __init__(self, tmp: Path) -> None:
        db = str(tmp / "b.db")
        keys = broker_keys(tmp)
        with CredentialTable(db) as table:
            self.cp = load_credential(issue(table, keys, "cp", "station", "CP*", None, tmp))
            self.other = load_credential(issue(table, keys, "ot", "station", "OT1", None, tmp))
            issue(table, keys, "old", "legacy-station", "OLD1", "10.0.0.9", tmp)
        self.keyring = Keyring(CredentialTable(db))
        self.metrics = BrokerMetrics()
        self.delivered: list[StatusDatagram] = []
        self.clock = NOW
        self.core = Core(CoreConfig(), new_id=lambda prefix: prefix)
        security = Security(self.keyring, keys.secret, Rejections(self.metrics.rejected))
        self.server = StatusServer(self.deliver, self.metrics, security, clock=lambda: self.clock)

    def deliver(self, d: StatusDatagram, signed_ts: float | None) -> Rejected | None:
        fx = self.core.handle_datagram(d, self.clock, signed_ts)
        if fx and isinstance(fx[0], Rejected):
            return fx[0]
        self.delivered.append(d)
        return None

    def signed(self, cred: Credential, **fields: Any) -> bytes:
        body = {"id": "CP01", "latitude": -12.0, "longitude": -38.0, "boot_id": "b1",
                "seq": 1, "ts": self.clock, **fields}  # fmt: skip
        return sign_datagram(cred, json.dumps(body).encode())

    def rejected(self, reason: str) -> float:
        return self.metrics.rejected.get("status", reason)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    e = Edge(tmp_path)
    yield e
    e.keyring.table.close()


def test_a_good_signed_datagram_is_delivered(edge: Edge) -> None:
    assert edge.server.handle(edge.signed(edge.cp), "1.2.3.4") == "ok"
    assert [d.id for d in edge.delivered] == ["CP01"]


def test_unsigned_datagrams_need_a_legacy_credential_and_its_address(edge: Edge) -> None:
    plain = json.dumps({"id": "OLD1", "latitude": 1.0, "longitude": 2.0}).encode()
    assert edge.server.handle(plain, "10.0.0.9") == "ok"
    assert edge.server.handle(plain, "10.0.0.10") == "rejected"
    cp = json.dumps({"id": "CP01", "latitude": 1.0, "longitude": 2.0}).encode()
    assert edge.server.handle(cp, "10.0.0.9") == "rejected"
    assert edge.rejected("unsigned") == 2
    assert [d.id for d in edge.delivered] == ["OLD1"]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: e.signed(e.other), "point_not_covered"),  # OT1's key speaking for CP01
        (lambda e: e.signed(e.cp).replace(b'"CP01"', b'"CP02"'), "bad_mac"),
        (lambda e: e.signed(e.cp).replace(b"EVS1 cp ", b"EVS1 nobody "), "unknown_credential"),
        (lambda e: e.signed(e.cp, ts=NOW - 61), "ts_out_of_window"),
        (lambda e: e.signed(e.cp, ts=NOW + 61), "ts_out_of_window"),
        (lambda e: e.signed(e.cp, ts="2026-01-01T00:00:00Z"), "missing_boot_seq_ts"),
        (lambda e: e.signed(e.cp, boot_id=None), "missing_boot_seq_ts"),
        (lambda e: e.signed(e.cp, seq=None), "missing_boot_seq_ts"),
        (lambda e: b"EVS1 garbage", "bad_signature"),
    ],
)
def test_bad_signed_datagrams_are_rejected_and_counted(
    edge: Edge, mutate: Any, reason: str
) -> None:
    assert edge.server.handle(mutate(edge), "1.2.3.4") == "rejected"
    assert edge.rejected(reason) == 1
    assert edge.delivered == []


def test_replays_within_a_boot_and_of_an_older_boot_are_rejected(edge: Edge) -> None:
    first = edge.signed(edge.cp, seq=5)
    assert edge.server.handle(first, "h") == "ok"
    assert edge.server.handle(first, "h") == "rejected"  # the same datagram again
    assert edge.server.handle(edge.signed(edge.cp, seq=4), "h") == "rejected"
    edge.clock += 1
    assert edge.server.handle(edge.signed(edge.cp, seq=6), "h") == "ok"
    # a datagram of another (older) boot, captured earlier: ts not later than the last one
    old_boot = edge.signed(edge.cp, boot_id="b0", seq=99, ts=NOW)
    assert edge.server.handle(old_boot, "h") == "rejected"
    assert edge.rejected("replayed") == 3
    # a genuinely new boot, later than the last accepted datagram
    edge.clock += 1
    assert edge.server.handle(edge.signed(edge.cp, boot_id="b2", seq=1), "h") == "ok"
    assert [d.seq for d in edge.delivered] == [5, 6, 1]


def test_a_revoked_station_is_refused_after_the_refresh(edge: Edge) -> None:
    assert edge.server.handle(edge.signed(edge.cp, seq=1), "h") == "ok"
    with CredentialTable(edge.keyring.table.path) as table:
        table.revoke("cp")
    edge.keyring.refresh()
    assert edge.server.handle(edge.signed(edge.cp, seq=2), "h") == "rejected"
    assert edge.rejected("unknown_credential") == 1


def test_an_unsigned_duplicate_is_stale_by_the_cores_rule(edge: Edge) -> None:
    body = {"id": "OLD1", "latitude": 1.0, "longitude": 2.0, "boot_id": "b1", "seq": 3}
    plain = json.dumps(body).encode()
    assert edge.server.handle(plain, "10.0.0.9") == "ok"
    assert edge.server.handle(plain, "10.0.0.9") == "stale"  # the edge keeps no table
    assert edge.metrics.datagrams.get("stale") == 1
    assert edge.rejected("stale") == 0  # not an attack: only the outcome is counted
    assert edge.core.stats()["datagrams_stale"] == 1
    assert [d.seq for d in edge.delivered] == [3]
