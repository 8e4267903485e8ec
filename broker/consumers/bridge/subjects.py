"""Names of the regional event streams: regions, subjects and message ids (no I/O).

Subjects are ``evcharge.<region>.<topic>`` and every message carries the header
``Nats-Msg-Id: <region>:<seq>`` (JetStream drops a second message with the same
id inside the stream's duplicate window).
"""

from __future__ import annotations

import re
from typing import Final

from common.errors import ConfigError

SUBJECT_ROOT: Final = "evcharge"
DEFAULT_STREAM: Final = "EVCHARGE"
MSG_ID: Final = "Nats-Msg-Id"
_REGION: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STREAM: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_region(name: str) -> str:
    """A region name usable as one subject token (letters, digits, ``-``, ``_``)."""
    if not _REGION.fullmatch(name):
        raise ConfigError(
            f"invalid region {name!r}: use 1-64 letters, digits, '-' or '_' (no dots or spaces)"
        )
    return name


def check_stream(name: str) -> str:
    if not _STREAM.fullmatch(name):
        raise ConfigError(f"invalid stream name {name!r}: use 1-64 letters, digits, '-' or '_'")
    return name


def check_nats_url(url: str) -> str:
    if not url.startswith(("nats://", "tls://")) or len(url) <= len("nats://"):
        raise ConfigError(f"invalid NATS URL {url!r}: expected nats://HOST:PORT")
    return url


def parse_regions(text: str | None) -> list[str]:
    """``a,b`` -> ``["a", "b"]`` (validated, without repeats); None or empty -> []."""
    out: list[str] = []
    for part in (text or "").split(","):
        name = part.strip()
        if name and check_region(name) not in out:
            out.append(name)
    return out


def subject(region: str, topic: str) -> str:
    return f"{SUBJECT_ROOT}.{region}.{topic}"


def region_filter(region: str | None, topic: str | None = None) -> str:
    """The subject filter of one region (or all, ``*``), one topic (or all, ``>``)."""
    return f"{SUBJECT_ROOT}.{region or '*'}.{topic or '>'}"


def msg_id(region: str, seq: int) -> str:
    return f"{region}:{seq}"


def parse_msg_id(text: str | None) -> tuple[str, int]:
    """``"<region>:<seq>"`` -> (region, seq); raises ValueError."""
    region, sep, seq = (text or "").rpartition(":")
    if not sep or not region or not seq.isdigit():
        raise ValueError(f"not a <region>:<seq> message id: {text!r}")
    return region, int(seq)


def split_subject(subj: str) -> tuple[str, str]:
    """``evcharge.<region>.<topic>`` -> (region, topic); raises ValueError."""
    root, _, rest = subj.partition(".")
    region, _, topic = rest.partition(".")
    if root != SUBJECT_ROOT or not region or not topic:
        raise ValueError(f"not an evcharge subject: {subj!r}")
    return region, topic
