"""Charger passwords for OCPP Security Profile 1 (HTTP Basic auth on the upgrade).

The chargers file never holds a password in clear: it holds
``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>`` (the form Django and
passlib use). OCPP's security whitepaper asks for 16-40 character random
passwords ("AuthorizationKey"); such passwords do not need a slow hash to
resist guessing, so the default work factor is modest (about 2 ms a check),
which keeps a reconnect storm of 10,000 chargers within seconds of CPU.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

from common.errors import ConfigError

SCHEME: Final = "pbkdf2_sha256"
DEFAULT_ITERATIONS: Final = 5_000
MIN_PASSWORD: Final = 16
MAX_PASSWORD: Final = 40
MAX_ITERATIONS: Final = 1_000_000


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """The stored form of ``password``; raises ConfigError for a password out of bounds."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ConfigError(
            f"a charger password must have {MIN_PASSWORD}-{MAX_PASSWORD} characters "
            "(OCPP 1.6 security whitepaper)"
        )
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ConfigError(f"iterations must be in 1..{MAX_ITERATIONS}")
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def check_hash_form(stored: str) -> None:
    """Raise ConfigError unless ``stored`` is a well-formed password hash."""
    _parse(stored)


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (constant-time compare)."""
    iterations, salt, digest = _parse(stored)
    if len(password) > 4 * MAX_PASSWORD:
        return False
    got = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(got, digest)


def _parse(stored: str) -> tuple[int, bytes, bytes]:
    parts = stored.split("$")
    try:
        if len(parts) != 4 or parts[0] != SCHEME:
            raise ValueError
        iterations = int(parts[1])
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
        if not 1 <= iterations <= MAX_ITERATIONS or not salt or len(digest) != 32:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"not a password hash (expected {SCHEME}$ITERATIONS$SALT$HASH, "
            "as `ev-station ocpp-password` prints)"
        ) from None
    return iterations, salt, digest


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
