"""A lean vehicle load generator for benchmarks: raw sockets and epoll, no broker code.

It must out-run the broker on a 2-core machine, so it does as little as possible
per request: one ``send`` of pre-built bytes, one ``recv``, a count of newlines.
Requests are written the way the original Go client writes them (one compact
object per write, no trailing newline). Each run reports the process CPU it used,
so a figure can be trusted only while the generator stayed below one core.

* :func:`closed_loop`: ``conns`` connections, each with one request outstanding.
* :func:`open_loop`: requests sent on a fixed schedule whatever the replies;
  latency is measured from the *scheduled* send time (no coordinated omission).

Positions: by default every query carries a **new random position** drawn
uniformly in the bounding box of the ``positions`` given, as moving vehicles
send (a vehicle never asks twice from the same float, so no per-position or
per-cell cache of the broker gets a free ride). ``moving=False`` cycles over the
fixed ``positions`` instead (the earlier benchmarks' load).
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import time
from collections.abc import Callable
from typing import Any

ORIGINAL_BATERIA = (
    '{"type":"bateria","data":{"id_veiculo":"%s","nivel_bateria":%d,'
    '"localizacao":{"latitude":%s,"longitude":%s},"timestamp":"2025-04-07T10:00:00"}}'
)
PING = '{"type":"ping","data":{"id_veiculo":"%s"}}'


ORIGINAL_CONSULTA = (
    '{"type":"consulta","data":{"id_veiculo":"%s",'
    '"localizacao":{"latitude":%s,"longitude":%s},"timestamp":"2025-04-07T10:00:05"}}'
)
#: ``kind`` -> the template of a query (vehicle id, then latitude and longitude)
QUERY_TEMPLATES = {
    "bateria": ORIGINAL_BATERIA.replace("%d", "15"),
    "consulta": ORIGINAL_CONSULTA,
}


def requests_for(kind: str, vehicle_id: str, positions: list[tuple[float, float]]) -> list[bytes]:
    """The cycle of requests one connection sends with fixed positions."""
    if kind == "ping":
        return [(PING % vehicle_id).encode()]
    template = QUERY_TEMPLATES[kind]
    return [
        (template % (vehicle_id, json.dumps(lat), json.dumps(lon))).encode()
        for lat, lon in positions
    ]


def request_source(
    kind: str,
    vehicle_id: str,
    positions: list[tuple[float, float]],
    moving: bool,
    seed: int,
) -> Callable[[], bytes]:
    """The next request of one connection, each call.

    ``moving``: a query at a new position drawn uniformly in the bounding box of
    ``positions`` (``repr`` of a float is its shortest JSON form); else the cycle of
    :func:`requests_for` from a per-connection start.
    """
    if kind == "ping" or not moving:
        cycle = requests_for(kind, vehicle_id, positions)
        state = [seed % len(cycle)]

        def fixed() -> bytes:
            i = state[0] = (state[0] + 1) % len(cycle)
            return cycle[i]

        return fixed
    template = (QUERY_TEMPLATES[kind] % (vehicle_id, "%r", "%r")).encode()
    lats = [lat for lat, _lon in positions]
    lons = [lon for _lat, lon in positions]
    lat0, dlat = min(lats), max(lats) - min(lats)
    lon0, dlon = min(lons), max(lons) - min(lons)
    rnd = random.Random(seed).random

    def moved() -> bytes:
        return template % (lat0 + dlat * rnd(), lon0 + dlon * rnd())

    return moved


def _connect(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    return socks


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def closed_loop(
    port: int,
    conns: int,
    seconds: float,
    kind: str,
    positions: list[tuple[float, float]],
    moving: bool = True,
) -> dict[str, Any]:
    """Closed loop for ``seconds``; returns done, latencies (s), elapsed and CPU seconds."""
    socks = _connect(port, conns)
    ep = select.epoll()
    by_fd: dict[int, tuple[socket.socket, Callable[[], bytes]]] = {}
    sent_at: dict[int, float] = {}
    for s in socks:
        local_port = s.getsockname()[1]
        source = request_source(kind, f"CAR{local_port}", positions, moving, local_port)
        by_fd[s.fileno()] = (s, source)
        ep.register(s.fileno(), select.EPOLLIN)
    lat: list[float] = []
    done = 0
    errors = 0
    perf = time.perf_counter
    cpu0 = _cpu()
    t0 = perf()
    stop_at = t0 + seconds
    for fd, (s, source) in by_fd.items():
        sent_at[fd] = perf()
        s.send(source())
    try:
        while True:
            now = perf()
            if now >= stop_at:
                break
            for fd, _ev in ep.poll(0.5):
                s, source = by_fd[fd]
                data = s.recv(262144)
                if not data:
                    raise ConnectionError("broker closed a connection")
                if b'"erro"' in data:
                    errors += 1
                if data[-1:] != b"\n":  # the rest of this reply is still on its way
                    continue
                now = perf()
                lat.append(now - sent_at[fd])
                done += 1
                if now < stop_at:
                    sent_at[fd] = now
                    s.send(source())
    finally:
        elapsed = perf() - t0
        cpu = _cpu() - cpu0
        ep.close()
        for s in socks:
            s.close()
    return {"done": done, "errors": errors, "lat": lat, "elapsed": elapsed, "cpu": cpu}


def open_loop(
    port: int,
    conns: int,
    rate: float,
    seconds: float,
    positions: list[tuple[float, float]],
    moving: bool = True,
    kind: str = "bateria",
) -> dict[str, Any]:
    """``rate`` requests/s spread over ``conns`` connections for ``seconds``."""
    socks = _connect(port, conns)
    ep = select.epoll()
    fds = [s.fileno() for s in socks]
    by_fd: dict[int, tuple[socket.socket, Callable[[], bytes]]] = {}
    scheduled: dict[int, list[float]] = {}
    head: dict[int, int] = {}
    for s in socks:
        local_port = s.getsockname()[1]
        source = request_source(kind, f"CAR{local_port}", positions, moving, local_port)
        by_fd[s.fileno()] = (s, source)
        scheduled[s.fileno()] = []
        head[s.fileno()] = 0
        ep.register(s.fileno(), select.EPOLLIN)
    total = int(rate * seconds)
    lat: list[float] = []
    perf = time.perf_counter
    cpu0 = _cpu()
    t0 = perf() + 0.01
    n = 0
    answered = 0
    try:
        while answered < total:
            now = perf()
            while n < total and t0 + n / rate <= now:
                fd = fds[n % conns]
                s, source = by_fd[fd]
                scheduled[fd].append(t0 + n / rate)
                s.send(source())
                n += 1
            wait = (t0 + n / rate - perf()) if n < total else 1.0
            if now > t0 + seconds + 10:
                break
            for fd, _ev in ep.poll(max(0.0, wait)):
                s, _source = by_fd[fd]
                data = s.recv(262144)
                if not data:
                    raise ConnectionError("broker closed a connection")
                # a complete reply ends with a newline; a reply split over two reads
                # counts when its last byte arrives
                k = data.count(b"\n")
                if k:
                    now = perf()
                    sched = scheduled[fd]
                    for _ in range(k):
                        lat.append(now - sched[head[fd]])
                        head[fd] += 1
                    answered += k
    finally:
        elapsed = perf() - t0
        cpu = _cpu() - cpu0
        ep.close()
        for s in socks:
            s.close()
    return {"done": answered, "sent": n, "lat": lat, "elapsed": elapsed, "cpu": cpu}
