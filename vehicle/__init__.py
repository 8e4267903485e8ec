"""The vehicle side of evcharge: asyncio client library, CLI, menu, drive and swarm."""

from __future__ import annotations

from vehicle.client import Push, VehicleClient

__all__ = ["Push", "VehicleClient"]
