"""The chaos run's drivers and operator: whole trips, recorded line by line.

This file runs *inside* a container of the stack (``python3 - ARGS < workload.py``),
next to the brokers, so it uses the standard library only and speaks the vehicle
protocol (docs/protocol.md) with its own small client: it is an outside driver,
not the project's client library. Every request it sends, every reply and push
it gets, every connection it opens or loses is one JSON line on stdout (the
journal the checker reads). Random choices come from ``--seed``.

A driver repeats: look for points near its region's centre, reserve one
(sometimes cancel instead of going), wait for its turn, arrive, charge
(sometimes stop early), wait for its bill, pause. After ``--seconds`` it winds
down: it cancels a reservation it holds, stops a session it runs, waits for the
bill up to ``--drain`` seconds and says ``done``. An operator takes random
points out of service for a few seconds through the web console's API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import sys
import time
import urllib.request
from typing import Any

PAYMENTS = ("Pix", "Débito em conta", "Cartão de crédito")
CENTRES = {"fsa": (-12.2664, -38.9663), "ssa": (-12.9714, -38.5014)}
REQUEST_TIMEOUT = 15.0


def emit(**record: Any) -> None:
    record["t"] = round(time.time(), 4)
    sys.stdout.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


class Link:
    """One vehicle's connection: requests with ids, replies matched, pushes queued.

    A lost connection is reopened on the next request (the same vehicle id); the
    journal says when it was lost and when it came back.
    """

    def __init__(self, who: str, region: str, host: str, port: int) -> None:
        self.who, self.region, self.host, self.port = who, region, host, port
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.ids = itertools.count(1)
        self.pump: asyncio.Task[None] | None = None

    def log(self, kind: str, **fields: Any) -> None:
        emit(who=self.who, region=self.region, kind=kind, **fields)

    async def _open(self) -> None:
        reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), 5
        )
        self.log("connected")
        self.pump = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                rid = msg.get("id")
                if rid is None:
                    self.log("push", type=msg.get("type"), data=msg.get("data"))
                    self.pushes.put_nowait(msg)
                    continue
                fut = self.pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (OSError, ValueError) as exc:
            self.log("error", type="read", data=repr(exc))
        finally:
            self.log("disconnected")
            self.writer = None
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection lost"))
            self.pending.clear()

    async def request(self, type_: str, data: dict[str, Any]) -> dict[str, Any] | None:
        """The reply, or None when the connection failed or nothing came in time."""
        rid = next(self.ids)
        data = {"id_veiculo": self.who, **data}
        try:
            if self.writer is None:
                await self._open()
            assert self.writer is not None
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self.pending[rid] = fut
            self.log("send", type=type_, data=data, req=rid)
            self.writer.write(json.dumps({"type": type_, "data": data, "id": rid}).encode() + b"\n")
            reply = await asyncio.wait_for(fut, REQUEST_TIMEOUT)
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.pending.pop(rid, None)
            self.log("error", type=type_, req=rid, data=repr(exc))
            return None
        self.log("reply", type=reply.get("type"), data=reply.get("data"), req=rid)
        return reply

    async def push(self, types: tuple[str, ...], timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await asyncio.wait_for(self.pushes.get(), left)
            except TimeoutError:
                return None
            if msg.get("type") in types:
                return msg
        return None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        if self.pump is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pump


def code_of(reply: dict[str, Any] | None) -> str:
    if reply is None:
        return "no_reply"
    data = reply.get("data")
    return str(data.get("code", "")) if isinstance(data, dict) else ""


class Driver:
    def __init__(self, link: Link, rng: random.Random, until: float, drain: float) -> None:
        self.link, self.rng, self.until, self.drain = link, rng, until, drain
        self.point: str | None = None  # where a reservation or session of ours is

    async def run(self) -> None:
        try:
            while time.monotonic() < self.until:
                await self.trip()
                await asyncio.sleep(self.rng.uniform(0.5, 2.0))
            await self.wind_down()
        finally:
            self.link.log("done")
            await self.link.close()

    async def trip(self) -> None:
        lat, lon = CENTRES[self.link.region]
        here = {"latitude": lat + self.rng.uniform(-0.03, 0.03),
                "longitude": lon + self.rng.uniform(-0.03, 0.03)}  # fmt: skip
        listed = await self.link.request("consulta", {"localizacao": here, "limite": 20})
        points = [p for p in (listed or {}).get("data") or [] if isinstance(p, dict)]
        usable = [p["id"] for p in points if p.get("estado") not in ("offline", "indisponivel")]
        if not usable:
            await asyncio.sleep(1.0)
            return
        point = self.rng.choice(usable)
        reply = await self.link.request("reserva", {"id_ponto_recarga": point, "tempo_estimado": 0})
        if code_of(reply) != "reserved":
            return
        self.point = point
        if self.rng.random() < 0.15:
            await asyncio.sleep(self.rng.uniform(0.2, 3.0))
            await self.link.request("cancelar", {"id_ponto_recarga": point})
            self.point = None
            return
        if not await self.wait_turn(point):
            return
        capacity = self.rng.choice((10, 20, 40))
        start = self.rng.randint(10, 50)
        arrive = {
            "id_ponto_recarga": point,
            "nivel_bateria": start,
            "nivel_carregar": min(100, start + self.rng.randint(5, 30)),
            "metodo_pagamento": self.rng.choice(PAYMENTS),
            "capacidade_kwh": capacity,
        }
        for _ in range(3):
            reply = await self.link.request("chegada", arrive)
            if code_of(reply) != "point_unreachable":
                break
            await asyncio.sleep(1.0)
        if code_of(reply) != "started":
            await self.link.request("cancelar", {"id_ponto_recarga": point})
            self.point = None
            return
        if self.rng.random() < 0.2:
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            await self.link.request("parar", {"id_ponto_recarga": point})
        await self.link.push(("custo_final",), timeout=90)
        self.point = None

    async def wait_turn(self, point: str) -> bool:
        """True at ``sua_vez``; False when the reservation ended otherwise or we gave up."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            push = await self.link.push(("sua_vez", "reserva_expirada", "reserva_cancelada"), 5)
            if push is not None:
                if push["type"] == "sua_vez":
                    return True
                self.point = None
                return False
            status = await self.link.request("status", {})  # a missed push: ask
            data = (status or {}).get("data") or {}
            reservation = data.get("reserva") if isinstance(data, dict) else None
            if status is not None and not reservation:
                self.point = None
                return False
            if isinstance(reservation, dict) and reservation.get("turno") is True:
                return True
        await self.link.request("cancelar", {"id_ponto_recarga": point})
        self.point = None
        return False

    async def wind_down(self) -> None:
        """Leave nothing behind: cancel what is queued, stop what charges, wait for the bill."""
        status = await self.link.request("status", {})
        data = (status or {}).get("data") or {}
        if not isinstance(data, dict):
            return
        reservation, session = data.get("reserva"), data.get("sessao")
        if isinstance(reservation, dict):
            point = reservation.get("id_ponto_recarga") or self.point
            await self.link.request("cancelar", {"id_ponto_recarga": point})
        if isinstance(session, dict):
            point = session.get("id_ponto_recarga") or self.point
            await self.link.request("parar", {"id_ponto_recarga": point})
            await self.link.push(("custo_final",), timeout=self.drain)
        await self.link.request("custos", {})


async def operator(args: argparse.Namespace, rng: random.Random, until: float) -> None:
    """Take a random point out of service for a few seconds, now and then."""
    base = f"http://{args.web}"
    headers = {"Authorization": f"Bearer {args.web_token}", "Content-Type": "application/json",
               "Origin": base}  # fmt: skip

    def call(path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(base + path, data=data, headers=headers)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read() or b"null")

    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(15, 30))
        try:
            points = await asyncio.to_thread(call, "/api/points")
            ids = sorted(p["id"] for p in points if isinstance(p, dict) and "id" in p)
            if not ids:
                continue
            point = rng.choice(ids)
            body = {"available": False, "reason": "chaos"}
            await asyncio.to_thread(call, f"/api/points/{point}/availability", body)
            emit(who="operator", region="fsa", kind="toggle", type="off", data=point)
            await asyncio.sleep(rng.uniform(3, 8))
            body = {"available": True, "reason": "chaos"}
            await asyncio.to_thread(call, f"/api/points/{point}/availability", body)
            emit(who="operator", region="fsa", kind="toggle", type="on", data=point)
        except (OSError, ValueError) as exc:
            emit(who="operator", region="fsa", kind="error", type="toggle", data=repr(exc))


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    until = time.monotonic() + args.seconds
    drivers = []
    for region, where in (("fsa", args.fsa), ("ssa", args.ssa)):
        host, port = address(where)
        for n in range(args.drivers):
            who = f"CHAOS-{region.upper()}-{args.seed}-{n}"
            link = Link(who, region, host, port)
            drivers.append(Driver(link, random.Random(rng.random()), until, args.drain))
    tasks = [asyncio.create_task(d.run()) for d in drivers]
    if args.web:
        tasks.append(asyncio.create_task(operator(args, random.Random(rng.random()), until)))
    await asyncio.gather(*tasks)
    emit(who="workload", region="", kind="finished")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--drivers", type=int, default=3, help="drivers per region")
    p.add_argument("--fsa", default="broker:8081")
    p.add_argument("--ssa", default="broker-ssa:8081")
    p.add_argument("--web", default="", help="HOST:PORT of the web console ('' = no operator)")
    p.add_argument("--web-token", default="")
    p.add_argument("--drain", type=float, default=90.0)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
