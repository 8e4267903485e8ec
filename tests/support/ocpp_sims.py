"""Simulated OCPP chargers for tests: the ``ocpp`` package's ChargePoint over real
WebSockets, on an asyncio loop of their own in a background thread (so that a test
can use blocking clients for the vehicle side at the same time)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from station.ocpp.passwords import hash_password
from station.ocpp.simulator import SimCharger, SimOptions
from station.ocpp.simulator201 import SimCharger201

T = TypeVar("T")

PASSWORD = "test-password-0123456789"  # 24 characters: within OCPP's 16-40
FAST_HASH_ITERATIONS = 1000  # tests create many chargers; the work factor is not under test


class SimLoop:
    """An event loop in a daemon thread that runs simulated chargers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.sims: list[Any] = []
        self._tasks: list[Future[Any]] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, url: str, charger_id: str, password: str = PASSWORD, **opts: Any) -> Any:
        """A simulated charger (``version="2.0.1"``: :class:`SimCharger201`) connecting to
        ``url``; ``ssl``: the client's TLS context."""
        ssl_ctx = opts.pop("ssl", None)
        kind = SimCharger201 if opts.pop("version", "1.6") == "2.0.1" else SimCharger

        async def make() -> Any:
            return kind(url, charger_id, password, SimOptions(**opts), ssl=ssl_ctx)

        sim = self.run(make())
        self.sims.append(sim)
        self._tasks.append(asyncio.run_coroutine_threadsafe(sim.run(), self.loop))
        return sim

    def close(self) -> None:
        async def stop_all() -> None:
            for s in self.sims:
                with contextlib.suppress(Exception):
                    await s.close()

        async def cancel_rest() -> None:
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(stop_all(), timeout=10)
        with contextlib.suppress(Exception):
            self.run(cancel_rest(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


@contextlib.contextmanager
def sim_loop() -> Iterator[SimLoop]:
    loop = SimLoop()
    try:
        yield loop
    finally:
        loop.close()


def write_chargers(
    path: Path,
    ids: list[str],
    *,
    price_kwh: float = 2.0,
    power_kw: float = 22.0,
    password: str = PASSWORD,
    lat: float = -12.2664,
    lon: float = -38.9663,
    id_tags: tuple[str, ...] = ("RFID042", "RFID201"),
    extra: dict[str, str] | None = None,
) -> Path:
    """A chargers file for ``ids`` (all with ``password``), spread a little around lat/lon,
    with ``id_tags`` authorized for walk-ins; ``extra``: more TOML lines for some ids
    (``ocpp = "2.0.1"``, ``connectors = [1, 2]``)."""
    pw_hash = hash_password(password, FAST_HASH_ITERATIONS)
    parts = []
    for n, cid in enumerate(ids):
        parts.append(
            "[[charger]]\n"
            f'id = "{cid}"\nlatitude = {lat + (n % 100) * 0.0001:.6f}\n'
            f"longitude = {lon + (n // 100) * 0.0001:.6f}\n"
            f"price_kwh = {price_kwh}\npower_kw = {power_kw}\n"
            f'password_hash = "{pw_hash}"\n' + (extra or {}).get(cid, "connector = 1\n")
        )
    parts += [f'[[idtag]]\nid = "{tag}"\n' for tag in id_tags]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
