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
    regions_file: str | None = None  # --regions: a directory of regions (vehicle.regions)
    region: str | None = None  # --region: the region to use from that directory

    @property
    def vehicle_id(self) -> str:
        if self._vehicle_id is None:
            self._vehicle_id = resolve_vehicle_id(self.explicit_id)
        return self._vehicle_id

    def address(self, near: tuple[float, float] | None = None) -> tuple[str, int]:
        """This vehicle's broker: with ``--regions``, the broker of the region named by
        ``--region`` or else of the region nearest to ``near`` (lat, lon)."""
        if self.regions_file is None:
            return self.broker, self.port
        from vehicle.regions import choose, load_directory

        region = choose(load_directory(self.regions_file), self.region, near)
        return region.broker, region.port

    def client(self, near: tuple[float, float] | None = None, **kwargs: Any) -> VehicleClient:
        """A client that proves the vehicle id: registers it on first use (the token is
        kept per broker address), authenticates with the kept token afterwards."""
        vid = self.vehicle_id
        broker, port = self.address(near)
        token = stored_token(broker, port, vid)

        def keep(new: str) -> None:
            store_token(broker, port, vid, new)

        def load() -> str | None:
            return stored_token(broker, port, vid)

        return VehicleClient(
            broker, port, vid, token=token, register=True, on_token=keep, load_token=load, **kwargs
        )
