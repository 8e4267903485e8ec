"""Vehicle settings that outlive one command: the stable vehicle id, payment names.

Without ``--id`` the CLI uses an id generated once and stored in the user's
config directory (``$XDG_CONFIG_HOME/evcharge/vehicle_id``, else
``~/.config/evcharge/vehicle_id``), so ``costs`` after ``arrive`` speaks for
the same vehicle.
"""

from __future__ import annotations

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
