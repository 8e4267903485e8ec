"""The default port of every endpoint, in one place (protocol.md lists them).

Public edges of the broker: vehicles (TCP), station status (UDP), station
commands (ZeroMQ ROUTER). Internal ones: the bus (PUB), history (ROUTER) and
HTTP (/metrics, /healthz). Then the operator web console and the OCPP gateway.
"""

from __future__ import annotations

from typing import Final

VEHICLE_PORT: Final = 8081
STATUS_PORT: Final = 8082
STATION_PORT: Final = 5555
EVENTS_PORT: Final = 5556
HISTORY_PORT: Final = 5557
HTTP_PORT: Final = 8090
GATEWAY_PORT: Final = 5558  # the core's ROUTER for vehicle gateways
WEB_PORT: Final = 8088
OCPP_PORT: Final = 9000
