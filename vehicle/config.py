"""Vehicle settings that outlive one command: the stable vehicle id, tokens, payment names.

Without ``--id`` the CLI uses an id generated once and stored in the user's
config directory (``$XDG_CONFIG_HOME/evcharge/vehicle_id``, else
``~/.config/evcharge/vehicle_id``), so ``costs`` after ``arrive`` speaks for
the same vehicle.

Tokens (the proof of a registered vehicle id, shown once by the broker) are
kept per broker address in ``<config>/tokens/<host>_<port>.json`` (a map
vehicle id -> token), written atomically with mode 0600 in a 0700 folder.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Final

from common.errors import ConfigError
from common.messages import VEHICLE_ID_PATTERN

# CLI payment choices -> the wire strings of the protocol
PAYMENT_CHOICES: Final[dict[str, str]] = {
    "pix": "Pix",
    "debito": "Débito em conta",
    "credito": "Cartão de crédito",
}

_ID_RE: Final = re.compile(VEHICLE_ID_PATTERN)


def payment_wire_name(choice: str) -> str:
    """The protocol's ``metodo_pagamento`` for a CLI choice (case-insensitive)."""
    key = choice.strip().lower()
    if key in PAYMENT_CHOICES:
        return PAYMENT_CHOICES[key]
    if choice in PAYMENT_CHOICES.values():
        return choice
    raise ConfigError(
        f"unknown payment method {choice!r}; choose one of Pix, debito, credito", field="payment"
    )


def validate_vehicle_id(vehicle_id: str) -> str:
    """``vehicle_id`` if it is 1-64 chars of ``[A-Za-z0-9_.-]``; else ConfigError."""
    if not _ID_RE.match(vehicle_id):
        raise ConfigError(
            f"invalid vehicle id {vehicle_id!r}: use 1-64 characters of A-Z a-z 0-9 _ . -",
            field="id",
        )
    return vehicle_id


def config_dir() -> Path:
    """The evcharge folder of the user's config directory (XDG rules)."""
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base else Path.home() / ".config"
    return root / "evcharge"


def id_file() -> Path:
    return config_dir() / "vehicle_id"


def stored_vehicle_id() -> str:
    """The stable id of this user's vehicle, generated and saved on first use."""
    path = id_file()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if text and _ID_RE.match(text):
        return text
    new_id = "EV" + secrets.token_hex(4).upper()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(new_id + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError(f"cannot store the vehicle id in {path}: {exc.strerror or exc}") from exc
    return new_id


def resolve_vehicle_id(explicit: str | None) -> str:
    """The explicit id (validated) or the stored one."""
    if explicit:
        return validate_vehicle_id(explicit)
    return stored_vehicle_id()


# --- tokens, per broker address --------------------------------------------------------------

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


def token_file(host: str, port: int) -> Path:
    """Where the tokens for the broker at ``host:port`` are kept."""
    name = _UNSAFE.sub("_", host.strip().lower()) or "_"
    return config_dir() / "tokens" / f"{name}_{port}.json"


def _read_tokens(path: Path) -> dict[str, str]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the tokens in {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"cannot read the tokens in {path}: not a JSON object")
    return {str(k): v for k, v in raw.items() if isinstance(v, str)}


def stored_token(host: str, port: int, vehicle_id: str) -> str | None:
    """The token kept for ``vehicle_id`` at this broker, if any."""
    return _read_tokens(token_file(host, port)).get(vehicle_id)


def store_token(host: str, port: int, vehicle_id: str, token: str) -> Path:
    """Keep ``token`` for ``vehicle_id`` at this broker (file mode 0600); returns the file."""
    path = token_file(host, port)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tokens = _read_tokens(path)
        tokens[vehicle_id] = token
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(tokens, out, indent=1, sort_keys=True)
            out.write("\n")
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError(f"cannot store the token in {path}: {exc.strerror or exc}") from exc
    return path
