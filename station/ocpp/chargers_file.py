"""The gateway's chargers file (TOML): one ``[[charger]]`` table per OCPP charger.

```toml
[[charger]]
id = "OC01"                 # chargePointId: the URL is /ocpp/OC01; also the point id
latitude = -12.2664
longitude = -38.9663
price_kwh = 2.0             # BRL per kWh
power_kw = 22.0             # optional, rated power (default 22)
connector = 1               # optional, the OCPP connectorId this point is (default 1)
password_hash = "pbkdf2_sha256$5000$...$..."   # `ev-station ocpp-password` prints one
ocpp = "auto"               # optional: "1.6", "2.0.1" or "auto" (what the charger offers)
security_profile = 1        # optional: 3 = mutual TLS (client certificate CN = id), no password
connectors = [1, 2]         # optional: one WebSocket, a point per connector ("OC01-1",
                            # "OC01-2"), or [{connector = 1, id = "P1"}, ...] to name them
```

Every problem is a :class:`common.errors.ConfigError` naming the charger and the field.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from common.errors import ConfigError
from station.ocpp.passwords import check_hash_form

CHARGER_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_POWER_KW: Final = 22.0
MAX_CHARGERS: Final = 100_000


VERSIONS: Final = ("auto", "1.6", "2.0.1")
MAX_CONNECTORS: Final = 32


@dataclass(frozen=True)
class ChargerSpec:
    """One point: a connector (1.6) or EVSE (2.0.1) of the charger ``charger_id``."""

    id: str
    latitude: float
    longitude: float
    price_kwh: float
    power_kw: float
    connector: int
    password_hash: str | None  # None: security profile 3 (client certificate only)
    charger_id: str = ""  # the chargePointId (URL); "" means ``id``
    ocpp: str = "auto"
    security_profile: int = 1

    @property
    def charger(self) -> str:
        return self.charger_id or self.id


def load_chargers(path: Path) -> list[ChargerSpec]:
    """Read and validate the chargers file at ``path``."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the chargers file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the chargers file {path} is not valid TOML: {exc}") from None
    return parse_chargers(raw)


def parse_chargers(raw: dict[str, Any]) -> list[ChargerSpec]:
    entries = raw.get("charger")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("the chargers file lists no charger (expected [[charger]] tables)")
    if len(entries) > MAX_CHARGERS:
        raise ConfigError(f"at most {MAX_CHARGERS} chargers per gateway")
    specs: list[ChargerSpec] = []
    points: set[str] = set()
    chargers: set[str] = set()
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"charger #{n}: expected a table")
        mine = _specs(n, entry)
        if mine[0].charger in chargers:
            raise ConfigError(f"charger #{n}: id {mine[0].charger!r} appears twice")
        chargers.add(mine[0].charger)
        for spec in mine:
            if spec.id in points:
                raise ConfigError(f"charger #{n}: point id {spec.id!r} appears twice")
            points.add(spec.id)
        specs.extend(mine)
        if len(specs) > MAX_CHARGERS:
            raise ConfigError(f"at most {MAX_CHARGERS} points per gateway")
    return specs


def _specs(n: int, e: dict[str, Any]) -> list[ChargerSpec]:
    """The points of one entry: itself, or one per connector of ``connectors``."""
    spec = _spec(n, e)
    connectors = e.get("connectors")
    if connectors is None:
        return [spec]
    where = f"charger {spec.id}"
    if not isinstance(connectors, list) or not 1 <= len(connectors) <= MAX_CONNECTORS:
        raise ConfigError(f"{where}: connectors must be a list of 1-{MAX_CONNECTORS} connectors")
    out: list[ChargerSpec] = []
    for c in connectors:
        number, pid = (c.get("connector"), c.get("id")) if isinstance(c, dict) else (c, None)
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 99:
            raise ConfigError(f"{where}: connectors: a connector must be an integer in 1..99")
        pid = pid if pid is not None else f"{spec.id}-{number}"
        if not isinstance(pid, str) or not CHARGER_ID_RE.match(pid):
            raise ConfigError(f"{where}: connectors: id must be 1-64 of A-Z a-z 0-9 _ . -")
        if any(o.connector == number or o.id == pid for o in out):
            raise ConfigError(f"{where}: connectors: connector {number} ({pid}) appears twice")
        out.append(dataclasses.replace(spec, id=pid, connector=number, charger_id=spec.id))
    return out


def _spec(n: int, e: dict[str, Any]) -> ChargerSpec:
    cid = e.get("id")
    if not isinstance(cid, str) or not CHARGER_ID_RE.match(cid):
        raise ConfigError(f"charger #{n}: id must be 1-64 characters of A-Z a-z 0-9 _ . -")
    where = f"charger {cid}"
    lat = _number(where, e, "latitude", -90.0, 90.0)
    lon = _number(where, e, "longitude", -180.0, 180.0)
    price = _number(where, e, "price_kwh", 0.0, 100.0)
    power = _number(where, e, "power_kw", 0.001, 1000.0, DEFAULT_POWER_KW)
    connector = e.get("connector", 1)
    if not isinstance(connector, int) or isinstance(connector, bool) or not 1 <= connector <= 99:
        raise ConfigError(f"{where}: connector must be an integer in 1..99")
    version = e.get("ocpp", "auto")
    if version not in VERSIONS:
        raise ConfigError(f"{where}: ocpp must be one of {', '.join(VERSIONS)}")
    profile = e.get("security_profile", 1)
    if profile not in (1, 2, 3) or isinstance(profile, bool):
        raise ConfigError(f"{where}: security_profile must be 1, 2 or 3")
    pw = e.get("password_hash")
    if pw is None and profile == 3:
        return ChargerSpec(cid, lat, lon, price, power, connector, None, "", version, 3)
    if not isinstance(pw, str):
        raise ConfigError(f"{where}: password_hash is missing (`ev-station ocpp-password`)")
    try:
        check_hash_form(pw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: password_hash: {exc.message}") from None
    return ChargerSpec(cid, lat, lon, price, power, connector, pw, "", version, profile)


def _number(
    where: str, e: dict[str, Any], key: str, lo: float, hi: float, default: float | None = None
) -> float:
    value = e.get(key, default)
    if value is None:
        raise ConfigError(f"{where}: {key} is missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {key} must be a number")
    v = float(value)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ConfigError(f"{where}: {key} must be in [{lo:g}, {hi:g}]")
    return v
