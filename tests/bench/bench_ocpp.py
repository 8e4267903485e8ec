"""Benchmark: one ``ev-station ocpp`` gateway holding many OCPP chargers, and the time
from a vehicle's ``chegada`` to ``started`` through it, side by side with our own
simulated stations (``ev-station fleet``) on the same broker in the same run.

Real processes: ``ev-broker serve``, the gateway (BENCH_OCPP_COUNT chargers, default
10,000, half OCPP 1.6J and half OCPP 2.0.1, heartbeat interval 60 s), a fleet of
BENCH_OCPP_FLEET stations (default 200). The chargers are a load generator in a child
process: raw OCPP-J frames over real WebSockets (boot, status, a ``Heartbeat`` every
60 s and ``MeterValues`` every 10 s with phases spread, answers to the gateway's
configuration calls, and to a remote start followed by the transaction's start),
light enough that the gateway, not the generator, is measured.

Reported: time until every charger is online at the broker; the gateway's resident
memory and open descriptors before any charger connected and with all connected, so
memory and descriptors per charger; its CPU share while holding them (60 s heartbeats,
10 s meter values); ``chegada`` -> ``started`` p50 and p99 for BENCH_OCPP_SESSIONS
sessions (default 200) through the gateway and through the fleet, and their ratio.

Run with ``python -m tests.bench.bench_ocpp``; BENCH_OCPP_STEADY sets the seconds of
steady state (default 30).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from tests.bench.bench_fleet import cpu_s, rss_mb
from tests.support.ocpp_sims import PASSWORD, write_chargers
from tests.support.procs import Proc, broker_ports, free_port, start, start_broker
from tests.support.raw_clients import http_get, metric
from vehicle.client import VehicleClient

LAT, LON = -12.2664, -38.9663


# --- the load generator (child process) ------------------------------------------------


METER_S = 10.0


def _answer(action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A schema-valid answer to a call of the gateway (both versions)."""
    if action == "SetVariables":
        rows = payload["setVariableData"]
        result = [{"attributeStatus": "Accepted", "component": r["component"],
                   "variable": r["variable"]} for r in rows]  # fmt: skip
        return {"setVariableResult": result}
    if action == "GetVariables":
        rows = payload["getVariableData"]
        got = {"attributeStatus": "Accepted", "attributeValue": "10"}
        result = [{**got, "component": r["component"], "variable": r["variable"]} for r in rows]
        return {"getVariableResult": result}
    return {"status": "Accepted"}


async def _charger(
    url: str,
    cid: str,
    hb_s: float,
    phase: float,
    stats: dict[str, int],
    gate: asyncio.Semaphore,
    v201: bool,
) -> None:
    import base64

    from websockets.asyncio.client import connect

    auth = base64.b64encode(f"{cid}:{PASSWORD}".encode()).decode()
    seq = 0

    def frame(action: str, payload: dict[str, Any]) -> str:
        nonlocal seq
        seq += 1
        return json.dumps([2, f"{cid}-{seq}", action, payload])

    def stamp() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    if v201:
        boot = {"chargingStation": {"model": "b", "vendorName": "b"}, "reason": "PowerUp"}
        status = {"evseId": 1, "connectorId": 1, "connectorStatus": "Available"}
    else:
        boot = {"chargePointVendor": "b", "chargePointModel": "b"}
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
    async with gate:  # a bounded number of chargers connect and boot at once
        ws = await connect(
            f"{url}/{cid}",
            # (ignored below) websockets types subprotocols as Subprotocol (a NewType of str)
            subprotocols=["ocpp2.0.1" if v201 else "ocpp1.6"],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Basic {auth}"},
            open_timeout=120,
            ping_interval=None,
        )
        await ws.send(frame("BootNotification", boot))
        await ws.recv()
        await ws.send(frame("StatusNotification", {**status, "timestamp": stamp()}))
    stats["booted"] += 1
    next_hb = time.monotonic() + phase
    next_meter = time.monotonic() + phase % METER_S
    register = 0
    try:
        while True:
            due = min(next_hb, next_meter)
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.01, due - time.monotonic()))
            except TimeoutError:
                if time.monotonic() >= next_hb:
                    await ws.send(frame("Heartbeat", {}))
                    stats["heartbeats"] += 1
                    next_hb += hb_s
                if time.monotonic() >= next_meter:
                    register += 100
                    sample = {"value": register if v201 else str(register)}
                    values = [{"timestamp": stamp(), "sampledValue": [sample]}]
                    key = "evseId" if v201 else "connectorId"
                    await ws.send(frame("MeterValues", {key: 1, "meterValue": values}))
                    stats["meter_values"] += 1
                    next_meter += METER_S
                continue
            msg = json.loads(raw)
            if msg[0] != 2:
                continue  # answers to our own calls
            uid, action, payload = msg[1], msg[2], msg[3]
            await ws.send(json.dumps([3, uid, _answer(action, payload)]))
            if action == "RemoteStartTransaction":
                start = {"connectorId": 1, "idTag": payload["idTag"], "meterStart": 0}
                await ws.send(frame("StartTransaction", {**start, "timestamp": stamp()}))
            elif action == "RequestStartTransaction":
                started = {
                    "eventType": "Started", "timestamp": stamp(), "triggerReason": "RemoteStart",
                    "seqNo": 0, "transactionInfo": {"transactionId": f"T{seq}"},
                    "idToken": payload["idToken"], "evse": {"id": 1, "connectorId": 1},
                    "meterValue": [{"timestamp": stamp(),
                                    "sampledValue": [{"value": register}]}],
                }  # fmt: skip
                await ws.send(frame("TransactionEvent", started))
    finally:
        await ws.close()


def generator(url: str, ids: list[str], hb_s: float, out: Queue[Any], stop: Event) -> None:
    import uvloop

    from common.oslimits import raise_nofile_limit

    raise_nofile_limit()

    async def main() -> None:
        stats = {"booted": 0, "heartbeats": 0, "meter_values": 0, "errors": 0}
        gate = asyncio.Semaphore(200)  # connections being opened at once

        async def one(i: int, cid: str) -> None:
            try:
                await _charger(url, cid, hb_s, hb_s * i / len(ids), stats, gate, i % 2 == 1)
            except Exception:
                stats["errors"] += 1

        tasks = [asyncio.create_task(one(i, cid)) for i, cid in enumerate(ids)]
        while not stop.is_set():
            out.put(("stats", dict(stats)))
            await asyncio.sleep(1.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    uvloop.run(main())


# --- the orchestrator -------------------------------------------------------------------


async def _latencies(port: int, points: list[str], prefix: str) -> list[float]:

    out: list[float] = []

    async def one(n: int, point: str) -> None:
        async with VehicleClient("127.0.0.1", port, f"{prefix}{n:05d}", timeout=30) as car:
            t0 = time.perf_counter()
            reply = await car.chegada(point, 20, 80, "Pix", capacidade_kwh=60)
            if reply.get("code") == "started":
                out.append(time.perf_counter() - t0)

    for i in range(0, len(points), 10):  # ten arrivals in flight at a time
        await asyncio.gather(
            *(one(i + k, p) for k, p in enumerate(points[i : i + 10])), return_exceptions=True
        )
    return out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000.0


def _drain(proc: Proc, stop: Event) -> None:
    """Keep reading the process's output (kept in ``proc.lines``) until ``stop``."""
    while not stop.is_set():
        try:
            proc.read_until("\0never", timeout=1.0)
        except TimeoutError:
            continue
        except (OSError, ValueError):
            return


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _online(http_port: int) -> float:
    status, text = http_get(http_port, "/metrics")
    return metric(text, "evcharge_points_online") if status == 200 else 0.0


def main() -> None:
    import resource

    # the gateway needs one descriptor per charger (its WebSocket; every point shares ONE
    # ZeroMQ connection to the broker)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fits = hard - 100 if hard != resource.RLIM_INFINITY else 10_000
    count = int(os.environ.get("BENCH_OCPP_COUNT", str(min(10_000, fits))))
    fleet_n = int(os.environ.get("BENCH_OCPP_FLEET", "200"))
    sessions = int(os.environ.get("BENCH_OCPP_SESSIONS", "200"))
    steady = float(os.environ.get("BENCH_OCPP_STEADY", "30"))
    hb_s = 60.0
    procs: list[Proc] = []
    mpc = mp.get_context("spawn")
    out: Queue[Any] = mpc.Queue()
    stop = mpc.Event()
    child = None
    with tempfile.TemporaryDirectory(prefix="bench-ocpp-") as tmp:
        try:
            ports = broker_ports()
            procs.append(start_broker(ports, str(Path(tmp) / "b.db"), "--log-level", "warning"))
            ids = [f"OC{n:05d}" for n in range(count)]
            # odd chargers speak 2.0.1 (the generator's choice), the file says "auto"
            chargers = write_chargers(Path(tmp) / "chargers.toml", ids)
            ws_port = free_port()
            gw = start(
                ["python", "-m", "station", "ocpp", "--chargers", str(chargers),
                 "--host", "127.0.0.1", "--port", str(ws_port), "--ocpp-heartbeat", str(int(hb_s)),
                 "--status-port", str(ports.status), "--station-port", str(ports.station),
                 "--vehicle-port", str(ports.vehicle), "--log-level", "warning",
                 *ports.cred_args("station")]
            )  # fmt: skip
            procs.append(gw)
            gw.read_until("ocpp gateway ready", timeout=120)
            drain = threading.Thread(target=_drain, args=(gw, stop), daemon=True)
            drain.start()  # a full output pipe would block the gateway
            time.sleep(2.0)
            rss_idle = rss_mb(gw.pid)
            fds_idle = _fds(gw.pid)
            fleet = start(
                ["python", "-m", "station", "fleet", "--count", str(fleet_n), "--prefix", "FS",
                 "--status-port", str(ports.status), "--station-port", str(ports.station),
                 "--speed", "1", "--log-level", "warning", "--report-every", "3600",
                 *ports.cred_args("station")]
            )  # fmt: skip
            procs.append(fleet)
            fleet.read_until("fleet ready", timeout=60)
            t0 = time.monotonic()
            child = mpc.Process(
                target=generator,
                args=(f"ws://127.0.0.1:{ws_port}/ocpp", ids, hb_s, out, stop),
                daemon=True,
            )
            child.start()
            deadline = t0 + 600
            while _online(ports.http) < count + fleet_n and time.monotonic() < deadline:
                time.sleep(1.0)
            all_online_s = time.monotonic() - t0
            online = int(_online(ports.http))
            time.sleep(3.0)
            rss_full = rss_mb(gw.pid)
            fds_full = _fds(gw.pid)
            cpu0, w0 = cpu_s(gw.pid), time.monotonic()
            time.sleep(steady)
            cpu_share = (cpu_s(gw.pid) - cpu0) / (time.monotonic() - w0)
            gen: dict[str, int] = {}
            with contextlib.suppress(Exception):
                while True:
                    _kind, gen = out.get(timeout=0.2)
            k = min(sessions, count, fleet_n)
            step = max(1, count // k)
            ocpp_points = ids[::step][:k]
            fleet_points = [f"FS{n + 1:04d}" for n in range(k)]
            via_ocpp = asyncio.run(_latencies(ports.vehicle, ocpp_points, "VO"))
            via_fleet = asyncio.run(_latencies(ports.vehicle, fleet_points, "VF"))
        finally:
            stop.set()
            gw_tail = "\n".join(gw.lines[-15:]) if procs else ""
            for p in reversed(procs):
                p.stop()
            if child is not None:
                child.join(timeout=10)
                if child.is_alive():
                    child.kill()
    if os.environ.get("BENCH_OCPP_VERBOSE"):
        print(f"gateway output (tail):\n{gw_tail}")
    per_charger_kb = (rss_full - rss_idle) * 1024 / max(1, count)
    print(f"OCPP gateway holding {count} chargers (heartbeat {hb_s:.0f} s), fleet of {fleet_n}")
    print(f"  open-files hard limit:     {hard} (1 per charger: at most {fits} chargers)")
    per_fd = (fds_full - fds_idle) / max(1, online - fleet_n)
    print(
        f"  gateway descriptors:       {fds_idle} idle, {fds_full} all in: {per_fd:.3f} per charger"
    )
    print(f"  all online at the broker:  {all_online_s:8.1f} s  ({online} points online)")
    print(f"  generator:                 {gen}")
    print(f"  gateway memory idle:       {rss_idle:8.1f} MB")
    print(f"  gateway memory, all in:    {rss_full:8.1f} MB")
    print(f"  memory per charger:        {per_charger_kb:8.1f} KB")
    print(
        f"  gateway CPU, steady:       {100 * cpu_share:8.1f} % of one core ({steady:.0f} s; "
        f"heartbeats 60 s, meter values {METER_S:.0f} s)"
    )
    p50o, p99o = _pct(via_ocpp, 0.50), _pct(via_ocpp, 0.99)
    p50f, p99f = _pct(via_fleet, 0.50), _pct(via_fleet, 0.99)
    print(
        f"  chegada->started via OCPP: p50 {p50o:7.1f} ms  p99 {p99o:7.1f} ms  (n={len(via_ocpp)})"
    )
    print(
        f"  chegada->started via fleet:p50 {p50f:7.1f} ms  p99 {p99f:7.1f} ms  (n={len(via_fleet)})"
    )
    print(
        f"  ratio OCPP / fleet:        p50 {p50o / p50f:7.2f} x   p99 {p99o / p99f:7.2f} x",
        flush=True,
    )


if __name__ == "__main__":
    main()
