"""``ev-broker backup``: a copy of a 200,000-event database, idle and while commits go on.

Prints the copy's time with nobody writing and with a writer committing one
event per transaction all along (as a busy broker does), side by side, and how
many commits went on during the copy (the broker is never blocked by it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from broker.backup import backup
from broker.store import Store
from common.messages import BusEvent

EVENTS = 200_000
BATCH = 1000


def _event(seq: int) -> BusEvent:
    data = {"point_id": f"CP{seq % 500:04d}", "estado": "disponivel", "available": True}
    return BusEvent(seq, time.time(), "point.status", data)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="evbench-backup."))
    store = Store(str(folder / "broker.db"))
    try:
        for start in range(1, EVENTS + 1, BATCH):
            store.write([], [_event(s) for s in range(start, start + BATCH)])
        size_mb = os.path.getsize(folder / "broker.db") / 1e6
        t0 = time.perf_counter()
        idle = backup(folder / "broker.db", folder / "idle.db")
        idle_s = time.perf_counter() - t0

        stop = threading.Event()
        commits = 0

        def writer() -> None:
            nonlocal commits
            seq = EVENTS
            while not stop.is_set():
                seq += 1
                store.write([], [_event(seq)])
                commits += 1

        thread = threading.Thread(target=writer)
        thread.start()
        t0 = time.perf_counter()
        busy = backup(folder / "broker.db", folder / "busy.db")
        busy_s = time.perf_counter() - t0
        stop.set()
        thread.join()
        print(f"database: {size_mb:.1f} MB, {idle.events} events")
        print(f"backup idle:             {idle_s:6.2f} s")
        print(f"backup while committing: {busy_s:6.2f} s  ({busy_s / idle_s:.2f}x idle)")
        print(f"commits during the copy: {commits}; the copy holds {busy.events} events")
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
