"""broker.store: records and events round-trip through a real SQLite file; bad files refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker.core.effects import Persist
from broker.store import SCHEMA_VERSION, Store
from common.errors import StoreError
from common.messages import BusEvent


def _event(seq: int, topic: str = "point.registered") -> BusEvent:
    return BusEvent(seq, 1700000000.0 + seq, topic, {"point_id": f"CP{seq}", "n": seq})


def test_records_and_events_survive_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    with Store(path) as store:
        store.write(
            [
                Persist("point", "CP1", {"id": "CP1", "lat": -12.5}),
                Persist("reservation", "R1", {"vehicle": "CAR1", "deadline": 12.25}),
                Persist("meta", "ids", {"next": 3}),
            ],
            [_event(1), _event(2)],
        )
        store.write([Persist("reservation", "R1", None), Persist("session", "S1", {"e": 1})], [])
    with Store(path) as store:
        records, last_seq = store.load()
    assert last_seq == 2
    assert sorted(records) == sorted(
        [
            ("point", "CP1", {"id": "CP1", "lat": -12.5}),
            ("session", "S1", {"e": 1}),
            ("meta", "ids", {"next": 3}),
        ]
    )


def test_events_since_pages(tmp_path: Path) -> None:
    with Store(str(tmp_path / "b.db")) as store:
        store.write([], [_event(i) for i in range(1, 8)])
        events, last, more = store.events_since(2, 3)
        assert [e.seq for e in events] == [3, 4, 5]
        assert (last, more) == (7, True)
        assert events[0] == _event(3)
        events, last, more = store.events_since(5, 1000)
        assert [e.seq for e in events] == [6, 7]
        assert more is False
        assert store.events_since(7, 10) == ([], 7, False)


def test_memory_store_needs_no_file(tmp_path: Path) -> None:
    with Store(":memory:") as store:
        store.write([Persist("point", "A", {"x": 1})], [_event(1)])
        assert store.load() == ([("point", "A", {"x": 1})], 1)


def test_duplicate_seq_rolls_back_whole_batch(tmp_path: Path) -> None:
    with Store(str(tmp_path / "b.db")) as store:
        store.write([], [_event(1)])
        with pytest.raises(StoreError):
            store.write([Persist("point", "B", {"x": 1})], [_event(1)])
        assert store.load() == ([], 1)


def test_second_store_on_same_file_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    with Store(path), pytest.raises(StoreError, match="in use by another running broker"):
        Store(path)
    Store(path).close()  # lock released on close


def test_corrupt_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(StoreError, match="cannot be used"):
        Store(str(path))


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(str(path))


def test_closed_store_raises_store_error() -> None:
    store = Store(":memory:")
    store.close()
    with pytest.raises(StoreError):
        store.load()
