"""Web console figures: bus event -> browser DOM update, and the page with 10,000 points.

Real processes: ``ev-broker serve``, ``ev-station fleet``, ``ev-broker web``
and a headless Chromium. Printed side by side in one run:

* latency from the broker publishing an event (its ``ts``) to (a) a raw SSE
  client reading it from the console and (b) the page having updated the row
  and the marker (p50/p99), for reservations made and cancelled at 20/s;
* page load time (navigation to the state drawn) and the web process's
  resident memory with 10 points and with 10,000 points.
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tests.support.browser import chromium
from tests.support.procs import Proc, start
from tests.support.raw_clients import Vehicle, wait_for
from tests.support.web_stack import TOKEN, WebStack, web_stack

RATE_HZ = 20.0
LATENCY_EVENTS = 300  # reservation created/cancelled pairs give twice as many events
BIG = 10_000
SMALL = 10


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fleet(stack: WebStack, count: int, interval: float) -> Proc:
    return start(
        [
            "python", "-m", "station", "fleet", "--count", str(count), "--prefix", "BW",
            "--seed", "7", "--interval", str(interval), "--speed", "1",
            "--status-port", str(stack.ports.status), "--station-port", str(stack.ports.station),
        ]
    )  # fmt: skip


def wait_points(stack: WebStack, count: int, timeout: float) -> None:
    def enough() -> bool:
        st = stack.get_json("/api/stats")
        return bool(st["points_online"] >= count)

    wait_for(enough, timeout, f"{count} points online in the console", interval=1.0)


class SseTimer(threading.Thread):
    """A raw SSE reader recording (seq, now - ts) for every event it reads."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(
            f"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        self.latency: dict[int, float] = {}
        self.stop = False

    def run(self) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while not self.stop:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                now = time.time()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.strip()
                    if text.startswith(b"data: {"):
                        ev = json.loads(text[6:])
                        if "seq" in ev:
                            self.latency[ev["seq"]] = now - ev["ts"]

    def close(self) -> None:
        self.stop = True
        self.sock.close()


def bench_latency(tmp: Path) -> None:
    with web_stack(tmp) as stack:
        stations = fleet(stack, 20, 1.0)
        try:
            wait_points(stack, 20, 120)
            ids = sorted(p["id"] for p in stack.get_json("/api/points"))
            with chromium() as page:
                page.get(f"{stack.url}/?token={TOKEN}")
                wait_for(lambda: page.execute_script("return window.evConsole.loads > 0"), 60)
                raw = SseTimer(stack.web_port)
                raw.start()
                first = stack.get_json("/healthz")["seq"]
                with contextlib.closing(Vehicle(stack.ports.vehicle, "BENCHWEB")) as v:
                    t0 = time.monotonic()
                    for i in range(LATENCY_EVENTS // 2):
                        pid = ids[i % len(ids)]
                        v.ask("reserva", id_ponto_recarga=pid, tempo_estimado=30)
                        time.sleep(max(0.0, t0 + (2 * i + 1) / RATE_HZ - time.monotonic()))
                        v.ask("cancelar", id_ponto_recarga=pid)
                        time.sleep(max(0.0, t0 + (2 * i + 2) / RATE_HZ - time.monotonic()))
                last = stack.get_json("/healthz")["seq"]
                wait_for(lambda: page.execute_script("return window.evConsole.applied") >= last, 60)
                log = page.execute_script("return window.evConsole.log")
                raw.close()
            dom = [e["latency"] for e in log if first < e["seq"] <= last and e["point"]]
            sse = [lat for seq, lat in raw.latency.items() if first < seq <= last]
            print(f"events measured: {len(dom)} in the page, {len(sse)} at a raw SSE client")
            handler = [e["drawMs"] for e in log if first < e["seq"] <= last and e["point"]]
            print(
                f"page draw time per frame: p50 {pct(handler, 0.5):.2f} ms, "
                f"p99 {pct(handler, 0.99):.2f} ms"
            )
            for name, values in (("bus -> SSE client", sse), ("bus -> page DOM", dom)):
                print(
                    f"{name:<18} p50 {pct(values, 0.5) * 1000:7.1f} ms   "
                    f"p99 {pct(values, 0.99) * 1000:7.1f} ms   "
                    f"max {max(values) * 1000:7.1f} ms   (n={len(values)})"
                )
            print(
                "page / SSE client p50 ratio: "
                f"{statistics.median(dom) / max(statistics.median(sse), 1e-9):.2f}"
            )
        finally:
            stations.stop()


def bench_load(tmp: Path, count: int) -> tuple[float, float, float, float]:
    """(page drawn s, state fetch + DOM ms, web RSS MiB before the page, after).

    "Drawn" is the page's own clock: navigation start to the second animation
    frame after the state was applied (map, table and figures painted).
    """
    with web_stack(tmp) as stack:
        stations = fleet(stack, count, 20.0 if count > 100 else 1.0)
        try:
            wait_points(stack, count, 600)
            time.sleep(2)
            before = rss_mib(stack.web.pid)
            with chromium() as page:
                page.get(f"{stack.url}/?token={TOKEN}")
                wait_for(lambda: page.execute_script("return window.evConsole.drawnAt > 0"), 300)
                load_s = float(page.execute_script("return window.evConsole.drawnAt")) / 1000
                draw_ms = float(page.execute_script("return window.evConsole.loadMs"))
                shown = page.execute_script("return window.evConsole.markerCount()")
                assert shown == count, (shown, count)
            after = rss_mib(stack.web.pid)
            return load_s, draw_ms, before, after
        finally:
            stations.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        bench_latency(Path(tmp) / "latency")
        results = {n: bench_load(Path(tmp) / f"load{n}", n) for n in (SMALL, BIG)}
    for n, (load_s, draw_ms, before, after) in results.items():
        print(
            f"{n:>6} points: page drawn {load_s:6.2f} s after navigation (state fetch + DOM "
            f"{draw_ms:5.0f} ms), "
            f"web RSS {before:6.1f} MiB idle, {after:6.1f} MiB after serving the page"
        )
    (s_load, _, _, s_rss), (b_load, _, _, b_rss) = results[SMALL], results[BIG]
    print(
        f"{BIG} vs {SMALL} points: page load x{b_load / s_load:.1f}, "
        f"web RSS x{b_rss / s_rss:.2f} (+{b_rss - s_rss:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
