"""Credentials as their holders use them: ``.cred`` files, CURVE client keys, signing.

A ``.cred`` file (JSON, mode 0600) is written by ``ev-broker credentials add``
and names one credential: ``name``, ``role``, ``points`` (a pattern, or null
for consumers and operators), the holder's CURVE key pair ``curve_public`` /
``curve_secret`` (Z85), ``hmac_key`` (base64 of 32 random bytes) and the
broker's CURVE public key ``broker_public`` (Z85).

* :func:`load_credential` reads and checks one file (a clear
  :class:`~common.errors.ConfigError` for anything wrong with it);
* :func:`curve_client` makes a ZeroMQ socket a CURVE client of the broker;
* :func:`sign_datagram` wraps a status datagram's JSON in the ``EVS1`` form;
* :func:`point_matches` is the one definition of a point pattern: an exact
  point id, or a prefix followed by ``*``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from common.errors import ConfigError

ROLES: Final = ("station", "legacy-station", "consumer", "operator", "gateway")
#: Roles whose credential names the points it may speak for.
POINT_ROLES: Final = ("station", "legacy-station")
#: The prefix of a signed status datagram.
SIGNED_PREFIX: Final = b"EVS1 "
Z85_KEY_LEN: Final = 40
HMAC_KEY_BYTES: Final = 32
CRED_FIELDS: Final = (
    "name",
    "role",
    "points",
    "curve_public",
    "curve_secret",
    "hmac_key",
    "broker_public",
)


def point_matches(pattern: str, point_id: str) -> bool:
    """``pattern`` is an exact id, or a prefix ending in ``*`` (``FSA-*``; ``*`` alone: all)."""
    if pattern.endswith("*"):
        return point_id.startswith(pattern[:-1])
    return point_id == pattern


def check_pattern(pattern: str) -> str:
    """The pattern itself when it is usable; ConfigError naming the rule otherwise."""
    if not pattern or any(c.isspace() for c in pattern) or len(pattern) > 65:
        raise ConfigError(f"invalid point pattern {pattern!r}: 1-64 characters, no spaces")
    if "*" in pattern[:-1]:
        raise ConfigError(
            f"invalid point pattern {pattern!r}: '*' may only end it (an exact id or PREFIX*)"
        )
    return pattern


def mac_hex(key: bytes, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``body`` under ``key``."""
    return hmac.new(key, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Credential:
    """One credential as its holder sees it (a loaded ``.cred`` file)."""

    name: str
    role: str
    points: str | None
    curve_public: str
    curve_secret: str
    hmac_key: bytes
    broker_public: str

    def covers(self, point_id: str) -> bool:
        """Whether this credential may speak for ``point_id``."""
        return self.points is not None and point_matches(self.points, point_id)


def _z85_key(value: Any, what: str, path: Path) -> str:
    if not isinstance(value, str) or len(value) != Z85_KEY_LEN:
        raise ConfigError(f"credentials file {path}: {what} is not a 40-character Z85 key")
    return value


def parse_credential(obj: Any, path: Path) -> Credential:
    """A :class:`Credential` from the decoded JSON of ``path``; ConfigError when unusable."""
    if not isinstance(obj, dict):
        raise ConfigError(f"credentials file {path}: not a JSON object")
    missing = [f for f in CRED_FIELDS if f not in obj]
    if missing:
        raise ConfigError(f"credentials file {path}: missing {', '.join(missing)}")
    name, role, points = obj["name"], obj["role"], obj["points"]
    if not isinstance(name, str) or not name:
        raise ConfigError(f"credentials file {path}: name must be a non-empty string")
    if role not in ROLES:
        raise ConfigError(f"credentials file {path}: role must be one of {', '.join(ROLES)}")
    if points is not None and not isinstance(points, str):
        raise ConfigError(f"credentials file {path}: points must be a string or null")
    try:
        key = base64.b64decode(str(obj["hmac_key"]), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"credentials file {path}: hmac_key is not base64") from None
    if len(key) != HMAC_KEY_BYTES:
        raise ConfigError(f"credentials file {path}: hmac_key must hold 32 bytes")
    return Credential(
        name=name,
        role=role,
        points=points,
        curve_public=_z85_key(obj["curve_public"], "curve_public", path),
        curve_secret=_z85_key(obj["curve_secret"], "curve_secret", path),
        hmac_key=key,
        broker_public=_z85_key(obj["broker_public"], "broker_public", path),
    )


def load_credential(path: str | Path) -> Credential:
    """Read a ``.cred`` file; ConfigError with the reason when it cannot be used."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"credentials file {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read credentials file {file}: {exc.strerror}") from None
    try:
        obj = json.loads(text)
    except ValueError:
        raise ConfigError(f"credentials file {file} is not JSON") from None
    return parse_credential(obj, file)


def load_optional(path: str | Path | None) -> Credential | None:
    """:func:`load_credential`, or None when no file is named (a lab broker, ``--insecure``)."""
    if path is None or not str(path).strip():
        return None
    return load_credential(str(path).strip())


def curve_client(sock: Any, cred: Credential | None) -> None:
    """Make ``sock`` (before it connects) a CURVE client of the broker; no-op without ``cred``."""
    if cred is None:
        return
    import zmq

    sock.setsockopt(zmq.CURVE_SERVERKEY, cred.broker_public.encode("ascii"))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, cred.curve_public.encode("ascii"))
    sock.setsockopt(zmq.CURVE_SECRETKEY, cred.curve_secret.encode("ascii"))


def sign_datagram(cred: Credential, body: bytes) -> bytes:
    """``EVS1 <name> <hex HMAC-SHA256(hmac_key, body)> <body>``."""
    mac = mac_hex(cred.hmac_key, body)
    return b"%s%s %s %s" % (SIGNED_PREFIX, cred.name.encode("utf-8"), mac.encode("ascii"), body)


def split_signed(data: bytes) -> tuple[str, str, bytes] | None:
    """``(name, hex mac, body)`` of a signed datagram; None when ``data`` is not one."""
    if not data.startswith(SIGNED_PREFIX):
        return None
    parts = data[len(SIGNED_PREFIX) :].split(b" ", 2)
    if len(parts) != 3:
        return None
    try:
        return parts[0].decode("utf-8"), parts[1].decode("ascii"), parts[2]
    except UnicodeDecodeError:
        return None
