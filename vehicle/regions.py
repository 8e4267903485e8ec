"""The directory of regions: which broker serves a vehicle (``ev-vehicle --regions FILE``).

A TOML file with one table per region::

    [regions.fsa]
    name = "Feira de Santana"      # optional, for people
    center = [-12.2664, -38.9663]  # latitude, longitude
    broker = "broker.fsa.example"  # the region's broker host
    port = 8081                    # its vehicle TCP port (default 8081)

A vehicle uses the region named by ``--region``; otherwise the one whose
centre is nearest to its position. Reading and choosing are pure functions.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from common.errors import ConfigError
from common.geo import haversine_km
from common.ports import VEHICLE_PORT

DEFAULT_PORT: Final = VEHICLE_PORT
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Region:
    key: str
    name: str
    lat: float
    lon: float
    broker: str
    port: int


def _region(key: str, raw: Any, source: str) -> Region:
    where = f"{source}: region {key!r}"
    if not _NAME.fullmatch(key):
        raise ConfigError(f"{where}: a region key is 1-64 letters, digits, '-' or '_'")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is not a table")
    center = raw.get("center")
    if (
        not isinstance(center, list)
        or len(center) != 2
        or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in center)
        or not (-90 <= center[0] <= 90 and -180 <= center[1] <= 180)
    ):
        raise ConfigError(f"{where}: center must be [latitude, longitude]")
    broker = raw.get("broker")
    if not isinstance(broker, str) or not broker or any(c.isspace() for c in broker):
        raise ConfigError(f"{where}: broker must be a host name")
    port = raw.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port must be 1-65535")
    name = raw.get("name", key)
    return Region(key, str(name), float(center[0]), float(center[1]), broker, port)


def parse_directory(text: str, source: str = "regions file") -> list[Region]:
    """The regions of a directory file's text; raises ConfigError naming the fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not TOML: {exc}") from None
    regions = data.get("regions")
    if not isinstance(regions, dict) or not regions:
        raise ConfigError(f"{source}: no [regions.<key>] tables")
    return [_region(key, raw, source) for key, raw in regions.items()]


def load_directory(path: str | Path) -> list[Region]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read regions file {path}: {exc}") from None
    return parse_directory(text, str(path))


def choose(
    regions: list[Region], name: str | None = None, near: tuple[float, float] | None = None
) -> Region:
    """The region named ``name``, else the one whose centre is nearest to ``near``."""
    if name is not None:
        for r in regions:
            if r.key == name:
                return r
        known = ", ".join(r.key for r in regions)
        raise ConfigError(f"no region {name!r} in the regions file (known: {known})")
    if near is None:
        raise ConfigError("this command has no position: name the region with --region")
    lat, lon = near
    return min(regions, key=lambda r: (haversine_km(lat, lon, r.lat, r.lon), r.key))
