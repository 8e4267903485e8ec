"""Container health check (run by the image's HEALTHCHECK and by every compose service).

* ``ev-broker serve`` is healthy when ``GET /healthz`` on its HTTP port
  (``EV_HTTP_PORT``, default 8090) answers 200 within 2 s.
* ``ev-station run|fleet|ocpp`` is healthy while it holds an established TCP
  connection to the broker's station port (``EV_STATION_PORT``, 5555);
  ``ev-station ocpp-charger`` while it holds one to the OCPP gateway
  (the port of ``EV_OCPP_URL``, 9000).
* ``ev-broker gateway`` is healthy while it holds a connection to the core's
  gateway port (``EV_GATEWAY_PORT``, 5558).
* ``ev-broker billing|tail|monitor|web|bridge`` is healthy while it holds an
  established connection to the broker's events port (``EV_EVENTS_PORT``,
  5556); ``billing`` from JetStream (``EV_SOURCE=nats://...``) while it holds
  one to NATS.
* Anything else (an interactive vehicle, a shell) is healthy while it runs.

Connections are read from /proc/net/tcp and /proc/net/tcp6 (the container's
own network namespace), so the check needs no tool in the image.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
import urllib.request
from pathlib import Path

ESTABLISHED = "01"


def program() -> tuple[str, str]:
    """(program, command) of the first evcharge process found: ("ev-broker", "serve")..."""
    for cmdline in sorted(Path("/proc").glob("[0-9]*/cmdline")):
        try:
            args = [a.decode(errors="replace") for a in cmdline.read_bytes().split(b"\0") if a]
        except OSError:
            continue
        names = [Path(a).name for a in args]
        for prog in ("ev-broker", "ev-station"):
            if prog in names:
                rest = [a for a in names[names.index(prog) + 1 :] if not a.startswith("-")]
                return prog, rest[0] if rest else ""
    return "", ""


def established_to(port: int) -> bool:
    """True when some TCP connection of this namespace to remote ``port`` is established."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == ESTABLISHED:
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port:
                    return True
    return False


def broker_healthy() -> int:
    port = os.environ.get("EV_HTTP_PORT", "8090")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


def connected(env: str, default: int, what: str) -> int:
    return connected_to(int(os.environ.get(env, str(default))), what, "the broker")


def connected_to(port: int, what: str, peer: str) -> int:
    if established_to(port):
        return 0
    print(f"unhealthy: {what} has no connection to {peer}'s port {port}", file=sys.stderr)
    return 1


def main() -> int:
    prog, command = program()
    if prog == "ev-broker" and command == "serve":
        return broker_healthy()
    if prog == "ev-station" and command == "ocpp-charger":  # talks to the OCPP gateway
        port = urllib.parse.urlsplit(os.environ.get("EV_OCPP_URL", "ws://x:9000")).port
        return connected_to(port or 9000, "ev-station ocpp-charger", "the OCPP gateway")
    if prog == "ev-station":
        return connected("EV_STATION_PORT", 5555, f"ev-station {command}")
    if prog == "ev-broker" and command == "billing" and os.environ.get("EV_SOURCE"):
        # billing from JetStream: its connection is to NATS, not to a broker
        port = urllib.parse.urlsplit(os.environ["EV_SOURCE"]).port
        return connected_to(port or 4222, "ev-broker billing", "NATS")
    if prog == "ev-broker" and command == "gateway":
        return connected("EV_GATEWAY_PORT", 5558, "ev-broker gateway")
    if prog == "ev-broker" and command in ("billing", "tail", "monitor", "web", "bridge"):
        return connected("EV_EVENTS_PORT", 5556, f"ev-broker {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
