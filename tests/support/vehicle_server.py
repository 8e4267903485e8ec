"""A small real TCP server speaking the vehicle protocol, for client tests.

:class:`ProtocolServer` is a real asyncio TCP server on a free port that knows a
few request types (enough to exercise correlation, pushes, error replies,
timeouts and reconnection); the end-to-end tests run the same clients against
the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

POINT = {
    "id": "CP01",
    "latitude": -12.97,
    "longitude": -38.5,
    "available": True,
    "estado": "disponivel",
    "queue_size": 0,
    "queue_capacity": 5,
    "distance": 1.234,
    "potencia_kw": 50.0,
    "preco_kwh": 2.0,
    "espera_estimada_min": 0,
}

BILL = {
    "vehicle_id": "CAR1",
    "id_ponto_recarga": "CP01",
    "session_id": "S1",
    "cost": 48.0,
    "moeda": "BRL",
    "payment_method": "Pix",
    "energia_kwh": 24.0,
    "nivel_inicial": 20,
    "nivel_final": 60,
    "duracao_s": 1800,
}
STATEMENT = {
    "vehicle_id": "CAR1",
    "moeda": "BRL",
    "total": 48.0,
    "sessoes": [
        {"session_id": "S1", "id_ponto_recarga": "CP01", "inicio": "a", "fim": "b",
         "energia_kwh": 24.0, "cost": 48.0, "payment_method": "Pix"}
    ],
}  # fmt: skip


class ProtocolServer:
    """A real TCP server answering a subset of the vehicle protocol, line by line."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.requests: list[dict[str, Any]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.reservations: Counter[str] = Counter()

    async def start(self) -> ProtocolServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while line := await reader.readline():
                req = json.loads(line)
                self.requests.append(req)
                task = asyncio.get_running_loop().create_task(self._answer(req, writer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(json.dumps(msg, ensure_ascii=False).encode() + b"\n")

    async def _answer(self, req: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        t, data, rid = req["type"], req.get("data", {}), req.get("id")

        def reply(type_: str, body: Any) -> None:
            self._send(writer, {"type": type_, "data": body, "id": rid})

        if t == "ping":
            reply("pong", {})
        elif t == "echo":  # answers after data.delay seconds: lets replies overtake
            await asyncio.sleep(float(data.get("delay", 0)))
            reply("echo", data)
        elif t == "consulta":
            weird = data.get("id_veiculo") == "WEIRD"  # a reply of the right type, wrong shape
            reply("lista_pontos", [1, "x"] if weird else [POINT])
        elif t == "bateria":
            if data.get("nivel_bateria", 0) > 100:
                msg = {"code": "invalid", "message": "bad level", "field": "nivel_bateria"}
                reply("erro", msg)
            elif str(data.get("id_veiculo", "")).startswith("DRIVE"):  # nearest one is full
                full = {**POINT, "id": "FULL", "distance": 0.1, "queue_size": 5}
                reply("pontos_disponiveis", {"pontos": [full, POINT]})
            else:
                reply("pontos_disponiveis", {"pontos": [POINT]})
        elif t == "reserva":
            point = data["id_ponto_recarga"]
            if point == "FULL":
                reply(
                    "reserva_response",
                    {"status": "error", "code": "queue_full", "message": "Queue full"},
                )
            elif point == "BAD":
                reply(
                    "reserva_response",
                    {"status": "error", "code": "invalid", "message": "Invalid request"},
                )
            else:
                ok = {
                    "status": "success",
                    "code": "reserved",
                    "message": "Reserve confirmed",
                    "vehicle_id": data.get("id_veiculo"),
                    "id_ponto_recarga": point,
                    "posicao": 1,
                }
                reply("reserva_response", ok)
                vehicle = str(data.get("id_veiculo", ""))
                self.reservations[vehicle] += 1
                push = {"id_ponto_recarga": point, "reservation_id": "R1", "expira_em": "x"}
                # vehicles named DRIVEX* see their first reservation expire
                expire = vehicle.startswith("DRIVEX") and self.reservations[vehicle] == 1
                self._send(
                    writer, {"type": "reserva_expirada" if expire else "sua_vez", "data": push}
                )
        elif t == "status":
            reply("status_veiculo", {"reserva": None, "sessao": None})
        elif t == "cancelar":
            reply("cancelar_response", {"status": "success", "code": "cancelled", "message": "ok"})
        elif t == "parar":
            reply("parar_response", {"status": "error", "code": "no_session", "message": "none"})
        elif t == "custos":
            reply("extrato", STATEMENT)
        elif t == "chegada":
            body = {"status": "success", "code": "started", "message": "go", "session_id": "S1"}
            reply("chegada_response", body)
            await asyncio.sleep(0.1)
            self._send(writer, {"type": "custo_final", "data": BILL})
        elif t == "never":
            return
        elif t == "drop":
            writer.close()
        elif t == "noid":  # an error the server cannot tie to a request
            self._send(writer, {"type": "erro", "data": {"code": "bad_json", "message": "x"}})
        else:
            reply("erro", {"code": "unknown_type", "message": f"unknown type {t}"})


def run_with_server(body: Callable[[ProtocolServer], Awaitable[None]]) -> None:
    async def main() -> None:
        server = await ProtocolServer().start()
        try:
            await asyncio.wait_for(body(server), 10)
        finally:
            await server.stop()

    asyncio.run(main())


@contextlib.contextmanager
def server_thread() -> Iterator[ProtocolServer]:
    """The protocol server on its own loop in a thread (for blocking clients)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(ProtocolServer().start(), loop).result(5)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
