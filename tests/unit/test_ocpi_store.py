"""The OCPI store: partners and hashed tokens, the outbox's order, merging and atomicity."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.consumers.ocpi.store import OcpiStore, Push
from broker.consumers.ocpi.wire import token_hash
from common.errors import StoreError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OcpiStore]:
    s = OcpiStore(tmp_path / "ocpi.db")
    yield s
    s.close()


def test_tokens_are_stored_hashed(store: OcpiStore, tmp_path: Path) -> None:
    store.add_partner("a", token_a="token-a-secret")
    assert b"token-a-secret" not in (tmp_path / "ocpi.db").read_bytes()
    # (ignored below) the partner exists: the test just stored it
    assert store.partner_by_token(["nope", "token-a-secret"]).name == "a"  # type: ignore[union-attr]
    assert store.partners()[0].token_in == token_hash("token-a-secret")
    with pytest.raises(StoreError):
        store.add_partner("a", token_a="other")
    assert (tmp_path / "ocpi.db").stat().st_mode & 0o077 == 0


def test_outbox_keeps_order_and_merges_an_undelivered_status(store: OcpiStore) -> None:
    store.enqueue([
        Push("a", "PATCH", "http://e/1", b'{"status":"CHARGING"}', "evse:1"),
        Push("a", "POST", "http://e/cdrs", b"cdr", None),
        Push("b", "PATCH", "http://e/1", b'{"status":"CHARGING"}', "evse:1"),
    ])  # fmt: skip
    store.enqueue([Push("a", "PATCH", "http://e/1", b'{"status":"AVAILABLE"}', "evse:1")])
    head = store.head("a")
    assert [(r.url, r.body) for r in head] == [
        ("http://e/1", b'{"status":"AVAILABLE"}'),
        ("http://e/cdrs", b"cdr"),
    ]
    assert store.queue_counts() == {"a": (2, 0), "b": (1, 0)}


def test_a_push_merged_while_in_flight_is_sent_again(store: OcpiStore) -> None:
    store.enqueue([Push("a", "PATCH", "http://e/1", b"old", "evse:1")])
    in_flight = store.head("a")
    store.enqueue([Push("a", "PATCH", "http://e/1", b"new", "evse:1")])
    store.delivered(in_flight)  # the old body arrived; the new one must still go
    assert [r.body for r in store.head("a")] == [b"new"]
    store.delivered(store.head("a"))
    assert store.head("a") == []


def test_failures_keep_the_row_and_dead_rows_leave_the_queue(store: OcpiStore) -> None:
    store.enqueue([Push("a", "POST", "http://e/x", b"1"), Push("a", "POST", "http://e/y", b"2")])
    first = store.head("a")[0]
    store.attempt_failed(first, "connection refused")
    assert store.head("a")[0].attempts == 1
    store.attempt_failed(store.head("a")[0], "HTTP 400", dead=True)
    assert [r.url for r in store.head("a")] == ["http://e/y"]
    assert store.queue_counts() == {"a": (1, 1)}


def test_cdrs_pushes_and_seq_commit_together(store: OcpiStore) -> None:
    store.enqueue(
        [Push("a", "POST", "http://e/cdrs", b"c1")], seq=42, cdrs=[("c1", "a", 5.0, b"{}")]
    )
    store.enqueue([], seq=43, cdrs=[("c1", "a", 6.0, b"{}")])  # a replay: kept once
    assert store.applied_seq() == 43
    total, rows = store.cdr_page("a", 0, 10, None, None)
    assert total == 1 and rows == [b"{}"]
    assert store.cdr_page("a", 0, 10, 5.5, None)[0] == 0
    assert store.cdr_page("b", 0, 10, None, None)[0] == 0


def test_removing_a_partner_drops_its_queue(store: OcpiStore) -> None:
    store.add_partner("a", token_a="t")
    store.enqueue([Push("a", "POST", "http://e/x", b"1")])
    assert store.remove_partner("a") and not store.remove_partner("a")
    assert store.head("a") == [] and store.partner_by_token(["t"]) is None
