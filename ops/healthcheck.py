"""Container health check (run by the image's HEALTHCHECK).

A container running ``ev-broker serve`` is healthy when ``GET /healthz`` on its
HTTP port (``EV_HTTP_PORT``, default 8090) answers 200 within 2 s. Containers
running any other program (station, billing, tail, vehicle) are healthy while
they run: their own liveness is what the broker reports about them.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path


def runs_broker_serve() -> bool:
    """True when some process in this container is ``ev-broker serve``."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        names = [Path(a.decode(errors="replace")).name for a in args if a]
        if "serve" in names and ("ev-broker" in names or "broker" in names):
            return True
    return False


def main() -> int:
    if not runs_broker_serve():
        return 0
    port = os.environ.get("EV_HTTP_PORT", "8090")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
