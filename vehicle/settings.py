"""The global options of ``ev-vehicle``, shared by every command and the menu."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vehicle.client import VehicleClient
from vehicle.config import resolve_vehicle_id, store_token, stored_token


@dataclass
class Settings:
    """Global options shared by every subcommand."""

    broker: str
    port: int
    explicit_id: str | None
    json: bool
    _vehicle_id: str | None = None

    @property
    def vehicle_id(self) -> str:
        if self._vehicle_id is None:
            self._vehicle_id = resolve_vehicle_id(self.explicit_id)
        return self._vehicle_id

    def client(self, **kwargs: Any) -> VehicleClient:
        """A client that proves the vehicle id: registers it on first use (the token is
        kept per broker address), authenticates with the kept token afterwards."""
        vid = self.vehicle_id
        token = stored_token(self.broker, self.port, vid)

        def keep(new: str) -> None:
            store_token(self.broker, self.port, vid, new)

        return VehicleClient(
            self.broker, self.port, vid, token=token, register=True, on_token=keep, **kwargs
        )
