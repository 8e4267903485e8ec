"""Put a fleet's stations in a site (``ev-station fleet --site``, for demos).

One ``set_site`` request to the broker's history socket (energy.md), retried
until the broker answers or ``wait_s`` passes; a refusal is final.
"""

from __future__ import annotations

import time
from typing import Any, Final

import zmq

from common.codec import pack, unpack
from common.credentials import Credential, curve_client
from common.errors import ConfigError, SiteRefused, TransportError

TRY_S: Final = 1.0


def set_site(
    broker: str,
    history_port: int,
    name: str,
    limit_kw: float,
    pattern: str,
    credential: Credential | None,
    wait_s: float = 15.0,
) -> dict[str, Any]:
    """Define site ``name`` over ``pattern``; the broker's reply.

    Raises :class:`SiteRefused` (the broker's words) or :class:`TransportError`.
    """
    if credential is not None and credential.role != "operator":
        raise ConfigError(
            f"--site-credentials: an operator credential is needed, not {credential.role}"
        )
    request = {"op": "set_site", "name": name, "limit_kw": limit_kw, "points": [pattern]}
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    deadline = time.monotonic() + wait_s
    try:
        while True:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            curve_client(sock, credential)
            sock.connect(f"tcp://{broker}:{history_port}")
            try:
                sock.send(pack(request))
                if sock.poll(int(TRY_S * 1000)):
                    reply = unpack(sock.recv_multipart()[-1])
                    if not isinstance(reply, dict):
                        raise TransportError("the broker's reply is not a map")
                    if "error" in reply:
                        raise SiteRefused(str(reply["error"]))
                    return reply
            finally:
                sock.close(linger=0)
            if time.monotonic() > deadline:
                raise TransportError(
                    f"no answer from the broker's history port {broker}:{history_port}"
                )
    finally:
        ctx.term()
