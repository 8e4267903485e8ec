"""What vehicle authentication and the limits cost, and what they buy, side by side in one run.

1. Fairness: 100 vehicles on the realistic mix at a fixed total rate (open loop,
   so latency is not the broker's saturation), p99 with no flood, with one
   connection flooding ``{}{}...`` without reading, and with one flooding
   connection that reads every reply (the harder case: its work never stops).
2. ``autenticar`` per connection: connect + ``ping`` against connect +
   ``autenticar`` + ``ping``, sequential connections; and the gate's own cost per
   request on a proven connection (in process), next to a whole ``ping``.
3. ``ev-vehicle swarm`` closed loop with ``--register`` against without.

Run: ``python -m tests.bench vehicle_security``. The broker is a real process on
free ports; the swarm runs in this process (uvloop).
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import threading
import time
import timeit
from collections.abc import Iterator
from typing import Any

from tests.support.procs import Proc, broker_ports, start_broker
from tests.support.raw_clients import HOST, LAT, LON, send_status
from vehicle.swarm import SwarmConfig, run_swarm

RATE = 1000
DURATION_S = 5.0
ROUNDS = 3
CONDITIONS: dict[str, bool | None] = {
    "no flood": None,
    "one flooder, never reads": False,
    "one flooder, reads replies": True,
}
CONNECTIONS = 1000


def _swarm(port: int, **kw: Any) -> dict[str, Any]:
    import uvloop

    cfg = SwarmConfig(
        host=HOST,
        port=port,
        count=100,
        duration=DURATION_S,
        center=(LAT, LON),
        radius_km=5.0,
        seed=7,
        **kw,
    )
    return uvloop.run(run_swarm(cfg)).to_dict()


def flood(port: int, read: bool) -> None:
    """The flooder process: one connection writing ``{}{}...`` as fast as it can until
    killed; with ``read`` it also reads every reply. Prints its counts on SIGTERM."""
    import signal
    import sys

    sent = {"bytes": 0, "replies": 0}
    s = socket.create_connection((HOST, port))
    if not read:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(0.2)
    chunk = b"{}" * 32768
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                sent["replies"] += s.recv(1 << 20).count(b"\n")

    def finish(*_: object) -> None:
        stop.set()
        print(json.dumps(sent), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, finish)
    if read:
        threading.Thread(target=drain, daemon=True).start()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError, OSError):
            sent["bytes"] += s.send(chunk)


@contextlib.contextmanager
def flooding(port: int, read: bool) -> Iterator[dict[str, int]]:
    """A flooder in its own process (so it does not share this process's interpreter
    with the measured swarm); its counts are filled in when it stops."""
    import subprocess
    import sys

    from tests.support.procs import ROOT

    counts: dict[str, int] = {}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bench_vehicle_security", "flood", str(port),
         "read" if read else "deaf"],
        stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # let it start flooding before the measurement begins
        yield counts
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        with contextlib.suppress(ValueError):
            counts.update(json.loads(out.decode().strip().splitlines()[-1]))


def fairness(port: int) -> None:
    print(
        f"1. fairness: 100 vehicles, realistic mix, open loop {RATE} req/s, {DURATION_S:g} s "
        f"x {ROUNDS} rounds interleaved (median p99 per condition)"
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONDITIONS}
    floods: dict[str, list[dict[str, int]]] = {name: [] for name in CONDITIONS}
    for _ in range(ROUNDS):
        for name, mode in CONDITIONS.items():
            if mode is None:
                runs[name].append(_swarm(port, rate=RATE))
                continue
            with flooding(port, read=mode) as counts:
                runs[name].append(_swarm(port, rate=RATE))
            floods[name].append(counts)
    base = statistics.median(r["latency_ms"]["p99"] for r in runs["no flood"])
    for name, rs in runs.items():
        p50 = statistics.median(r["latency_ms"]["p50"] for r in rs)
        p99 = statistics.median(r["latency_ms"]["p99"] for r in rs)
        all_p99 = ", ".join(f"{r['latency_ms']['p99']:.0f}" for r in rs)
        extra = ""
        if floods[name]:
            mb = sum(f.get("bytes", 0) for f in floods[name]) / len(floods[name]) / 1e6
            extra = f"  flood {mb:.1f} MB sent per run"
            replies = sum(f.get("replies", 0) for f in floods[name]) / len(floods[name])
            if replies:
                extra += f", {replies:,.0f} error replies read"
        print(
            f"   {name:28s} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms ({p99 / base:4.2f}x) "
            f"[runs: {all_p99}]{extra}"
        )


def _connections(port: int, token: str | None, n: int) -> float:
    """Seconds per connection: connect, (autenticar,) ping, close."""
    ping = b'{"type":"ping","data":{},"id":1}\n'
    auth = (
        json.dumps(
            {"type": "autenticar", "data": {"id_veiculo": "BENCHAUTH", "token": token}, "id": 0}
        ).encode()
        + b"\n"
        if token
        else b""
    )
    want = 2 if token else 1
    started = time.perf_counter()
    for _ in range(n):
        with socket.create_connection((HOST, port)) as s:
            s.sendall(auth)
            if token:  # one round trip each, as a client proving its id first does
                _lines(s, 1)
            s.sendall(ping)
            _lines(s, want - 1 if token else 1)
    return (time.perf_counter() - started) / n


def _lines(s: socket.socket, n: int) -> None:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(65536)
        assert chunk, "closed"
        buf += chunk
    assert b'"erro"' not in buf, buf


def auth_cost(port: int) -> None:
    print(f"2. autenticar per connection ({CONNECTIONS} sequential connections each way)")
    with socket.create_connection((HOST, port)) as s:
        s.sendall(b'{"type":"registrar","data":{"id_veiculo":"BENCHAUTH"}}\n')
        buf = b""
        while b"\n" not in buf:
            buf += s.recv(4096)
        token = json.loads(buf)["data"]["token"]
    _connections(port, None, 100)  # warm up
    plain = min(_connections(port, None, CONNECTIONS) for _ in range(2))
    proven = min(_connections(port, token, CONNECTIONS) for _ in range(2))
    print(
        f"   connect+ping {plain * 1e3:.3f} ms, connect+autenticar+ping {proven * 1e3:.3f} ms: "
        f"autenticar adds {(proven - plain) * 1e3:.3f} ms per connection "
        f"({proven / plain:.2f}x; one extra round trip + SHA-256)"
    )
    from broker.core.vehicle_auth import AuthMode, ConnAuth, VehicleAuth
    from common.messages import Bateria, Location

    gate = VehicleAuth(AuthMode.OPEN, lambda: "t" * 43)
    conn = ConnAuth(1, "127.0.0.1", "CAR1")
    data = Bateria(id_veiculo="CAR1", nivel_bateria=50, localizacao=Location(LAT, LON))
    gate.admit(conn, "bateria", data, 0.0)
    number, total = 200_000, 0.0
    total = min(timeit.repeat(lambda: gate.admit(conn, "bateria", data, 0.0), number=number))
    print(
        f"   the gate per request on a bound connection: {total / number * 1e9:.0f} ns "
        f"(next to {plain * 1e3:.3f} ms for a whole connect+ping)"
    )


def register_swarm(port: int) -> None:
    print(f"3. swarm closed loop, 100 vehicles, realistic mix, {DURATION_S:g} s")
    without = _swarm(port)
    with_reg = _swarm(port, register=True)
    for name, r in (("without --register", without), ("with --register", with_reg)):
        lat = r["latency_ms"]
        auth = r.get("auth_ms") or {}
        extra = f"  registrar p50 {auth['p50']:.2f} ms" if auth else ""
        print(f"   {name:20s} {r['throughput_rps']:8.0f} req/s  p99 {lat['p99']:7.2f} ms{extra}")
    ratio = with_reg["throughput_rps"] / max(without["throughput_rps"], 1e-9)
    print(f"   throughput with/without: {ratio:.2f}x")


def main() -> None:
    ports = broker_ports()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        proc: Proc = start_broker(ports, f"{folder}/broker.db")
        try:
            for i in range(20):
                send_status(ports.status, f"SEC{i:02d}", latitude=LAT + i * 0.002)
            time.sleep(0.5)  # the datagrams are in; nothing else depends on it
            fairness(ports.vehicle)
            auth_cost(ports.vehicle)
            register_swarm(ports.vehicle)
        finally:
            proc.stop()


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "flood":
        flood(int(sys.argv[2]), sys.argv[3] == "read")
    else:
        main()
