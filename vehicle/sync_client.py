"""A thin synchronous wrapper over :class:`vehicle.client.VehicleClient` for scripts.

The asyncio client runs on a private event loop in a background thread; each
method blocks until its reply (same exceptions as the async client). Pushes
are collected in a thread-safe queue: read them with :meth:`next_push`.

    with SyncVehicleClient("127.0.0.1", 8081, "CAR1") as c:
        points = c.consulta(-12.97, -38.50)
        c.reserva(points[0]["id"])
        print(c.next_push("sua_vez", timeout=30))
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from common.errors import RequestTimeout
from common.ports import VEHICLE_PORT
from vehicle.client import Push, Reply, VehicleClient

T = TypeVar("T")


class SyncVehicleClient:
    """Blocking facade: same constructor arguments and methods as VehicleClient."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = VEHICLE_PORT,
        vehicle_id: str | None = None,
        **kw: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="vehicle-client-loop", daemon=True
        )
        self._thread.start()
        self._client = VehicleClient(host, port, vehicle_id, **kw)
        self._pushes: queue.Queue[Push] = queue.Queue()
        self._client.subscribe(self._pushes.put)
        self._closed = False

    @property
    def vehicle_id(self) -> str | None:
        return self._client.vehicle_id

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncVehicleClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, *, bind: bool = False) -> None:
        self._run(self._client.connect(bind=bind))

    def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self._run(self._client.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def request(
        self, type_: str, data: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Reply:
        return self._run(self._client.request(type_, data, timeout=timeout))

    def bateria(
        self, nivel_bateria: float, latitude: float, longitude: float, **kw: Any
    ) -> list[dict[str, Any]]:
        return self._run(self._client.bateria(nivel_bateria, latitude, longitude, **kw))

    def consulta(self, latitude: float, longitude: float, **kw: Any) -> list[dict[str, Any]]:
        return self._run(self._client.consulta(latitude, longitude, **kw))

    def reserva(self, point_id: str, tempo_estimado: float = 0) -> dict[str, Any]:
        return self._run(self._client.reserva(point_id, tempo_estimado))

    def cancelar(self, point_id: str) -> dict[str, Any]:
        return self._run(self._client.cancelar(point_id))

    def chegada(
        self,
        point_id: str,
        nivel_bateria: float,
        nivel_carregar: float,
        metodo_pagamento: str,
        **kw: Any,
    ) -> dict[str, Any]:
        return self._run(
            self._client.chegada(point_id, nivel_bateria, nivel_carregar, metodo_pagamento, **kw)
        )

    def parar(self, point_id: str) -> dict[str, Any]:
        return self._run(self._client.parar(point_id))

    def custos(self) -> dict[str, Any]:
        return self._run(self._client.custos())

    def status(self) -> dict[str, Any]:
        return self._run(self._client.status())

    def ping(self) -> float:
        return self._run(self._client.ping())

    def next_push(self, *types: str, timeout: float | None = None) -> Push:
        """The next push (of one of ``types`` when given); RequestTimeout after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                push = self._pushes.get(timeout=left)
            except queue.Empty:
                raise RequestTimeout(f"no push within {timeout:g} s") from None
            if not types or push.type in types:
                return push
