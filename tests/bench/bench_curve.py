"""Benchmark: what CURVE costs, side by side in one run.

1. **Fleet ramp**: a real ``ev-broker serve`` and a real ``ev-station fleet`` of
   ``BENCH_CURVE_STATIONS`` (10,000) stations; the time from starting the fleet
   until the broker counts every station online, and the CPU seconds the broker
   and the fleet spent meanwhile. Once with ``--insecure`` (plain ZeroMQ,
   unsigned datagrams), once with authentication (CURVE handshakes checked by
   the ZAP handler, one credential ``BF*`` for the fleet, EVS1-signed
   datagrams).
2. **Bus throughput to one subscriber**: the broker's PUB options and a real
   bus event (two frames, ~200 bytes); ``BENCH_CURVE_EVENTS`` (200,000) events
   published as fast as the PUB takes them and counted by one SUB, plain and
   with CURVE (pyzmq's ThreadAuthenticator admitting the key).

Each figure is printed with the ratio CURVE / plain. Run with
``python -m tests.bench curve``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from common.codec import encode_event
from common.messages import BusEvent
from tests.support.procs import broker_ports, start, start_broker
from tests.support.raw_clients import http_get, metric

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def fleet_ramp(count: int, secure: bool, tmp: Path) -> tuple[float, float, float]:
    """(seconds until all ``count`` stations are online, broker CPU s, fleet CPU s)."""
    ports = broker_ports()
    extra = ("--offline-after", "120", "--log-level", "warning")
    broker = start_broker(
        ports, str(tmp / f"ramp-{secure}.db"), *extra, *(() if secure else ("--insecure",))
    )
    fleet = None
    try:
        cred: list[str] = []
        if secure:
            assert ports.creds is not None
            path = ports.creds.add("bench-fleet", "station", "BF*")
            cred = ["--credentials", str(path)]
            time.sleep(1.5)  # the broker re-reads its credentials every second
        args = ["python", "-m", "station", "fleet", "--count", str(count), "--prefix", "BF",
                "--interval", "20", "--status-port", str(ports.status),
                "--station-port", str(ports.station), "--report-every", "3600",
                "--log-level", "warning", *cred]  # fmt: skip
        cpu_b0 = _cpu_s(broker.pid)
        t0 = time.monotonic()
        fleet = start(args)
        online = 0.0
        while online < count:
            if time.monotonic() - t0 > 600:
                raise TimeoutError(f"only {online:.0f} of {count} online after 600 s")
            time.sleep(0.5)
            _, text = http_get(ports.http, "/metrics")
            online = metric(text, 'evcharge_events_total{topic="point.online"}')
        took = time.monotonic() - t0
        return took, _cpu_s(broker.pid) - cpu_b0, _cpu_s(fleet.pid)
    finally:
        if fleet is not None:
            fleet.stop()
        broker.stop()


def bus_throughput(events: int, secure: bool) -> float:
    """Events per second one SUB receives from a PUB (plain or CURVE)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = None
    try:
        pub = ctx.socket(zmq.PUB)
        sub = ctx.socket(zmq.SUB)
        for sock in (pub, sub):
            sock.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, 0)
        sub.setsockopt(zmq.RCVHWM, 0)
        if secure:
            auth = ThreadAuthenticator(ctx)
            auth.start()
            auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
            server_public, server_secret = zmq.curve_keypair()
            client_public, client_secret = zmq.curve_keypair()
            pub.setsockopt(zmq.CURVE_SERVER, 1)
            pub.setsockopt(zmq.CURVE_SECRETKEY, server_secret)
            pub.setsockopt(zmq.ZAP_DOMAIN, b"consumers")
            sub.setsockopt(zmq.CURVE_SERVERKEY, server_public)
            sub.setsockopt(zmq.CURVE_PUBLICKEY, client_public)
            sub.setsockopt(zmq.CURVE_SECRETKEY, client_secret)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{port}")
        data = {"session_id": "ses-0123456789ab", "vehicle_id": "CAR0001", "point_id": "CP0001",
                "energia_kwh": 36.0, "cost": "72.00", "reason": "target_reached"}  # fmt: skip
        frames = encode_event(BusEvent(1, time.time(), "charging.completed", data))
        while not sub.poll(10):  # until the subscription is through
            pub.send_multipart(frames)
        while sub.poll(100):
            sub.recv_multipart()
        got = 0

        def receive() -> None:
            nonlocal got
            while got < events and sub.poll(5000):
                sub.recv_multipart()
                got += 1

        reader = threading.Thread(target=receive)
        t0 = time.perf_counter()
        reader.start()
        for _ in range(events):
            pub.send_multipart(frames)
        reader.join()
        took = time.perf_counter() - t0
        assert got == events, f"received {got} of {events}"
        pub.close(linger=0)
        sub.close(linger=0)
        return events / took
    finally:
        if auth is not None:
            auth.stop()
        ctx.destroy(linger=0)


def main() -> None:
    stations = int(os.environ.get("BENCH_CURVE_STATIONS", "10000"))
    events = int(os.environ.get("BENCH_CURVE_EVENTS", "200000"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-curve-"))
    try:
        plain_bus = bus_throughput(events, secure=False)
        curve_bus = bus_throughput(events, secure=True)
        print(f"bus throughput to one subscriber ({events} events of ~200 B)")
        print(f"  plain:  {plain_bus:10.0f} events/s")
        print(
            f"  CURVE:  {curve_bus:10.0f} events/s   ratio CURVE/plain {curve_bus / plain_bus:.2f}"
        )
        plain = fleet_ramp(stations, secure=False, tmp=tmp)
        curve = fleet_ramp(stations, secure=True, tmp=tmp)
        print(f"fleet ramp: {stations} stations until all online at the broker")
        for name, (took, cpu_b, cpu_f) in (("plain", plain), ("CURVE", curve)):
            print(
                f"  {name:6s} {took:7.1f} s   broker CPU {cpu_b:6.1f} s   fleet CPU {cpu_f:6.1f} s"
            )
        print(
            f"  ratio CURVE/plain: time {curve[0] / plain[0]:.2f}, broker CPU "
            f"{curve[1] / max(plain[1], 1e-9):.2f}, fleet CPU {curve[2] / max(plain[2], 1e-9):.2f}",
            flush=True,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
