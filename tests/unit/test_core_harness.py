"""Tests of the core test harness itself (tests/support/core_harness.py)."""

from __future__ import annotations

from tests.support.core_harness import Harness

# --- tests of the harness itself -------------------------------------------------------


def test_harness_ids_are_unique_and_prefixed() -> None:
    h = Harness()
    ids = {h.new_id("res") for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("res-") for i in ids)


def test_harness_starts_with_broker_started_at_seq_1() -> None:
    h = Harness()
    assert [(e.seq, e.topic) for e in h.events] == [(1, "broker.started")]
    assert h.core.last_seq == 1
