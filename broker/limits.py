"""The broker's limits against clients that would starve it (security contract, "Limits").

One frozen value, built once by ``ev-broker serve`` from its options and handed
to the edges that enforce each limit; the defaults are the contract's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MIB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Every limit; past one, the edge refuses, waits or closes as documented."""

    #: open vehicle connections; past it new ones are closed at once
    max_vehicle_connections: int = 20_000
    #: requests handled per vehicle connection per event-loop turn (fairness)
    requests_per_turn: int = 64
    #: unsent reply bytes per vehicle connection before reading from it stops
    max_unsent_bytes: int = 1 * MIB
    #: a connection over ``max_unsent_bytes`` that has not read for this long is closed
    stalled_close_s: float = 30.0
    #: a vehicle connection without a request for this long is closed
    idle_timeout_s: float = 300.0
    #: open HTTP connections; past it new ones are refused
    max_http_connections: int = 64
    #: bytes of one HTTP request head; past it 431 and close
    max_http_head: int = 8 * 1024
    #: an HTTP connection silent (or not reading) this long is closed
    http_idle_s: float = 30.0
    #: events in one history reply
    history_max_events: int = 1000
    #: bytes of one history reply (events beyond it wait for the next ``since``)
    history_max_bytes: int = 4 * MIB
