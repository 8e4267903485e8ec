"""OCPI 2.2.1 transport rules, without I/O: tokens, the envelope, pagination, ids.

* ``Authorization: Token <base64(token)>`` (2.2.1 encodes the token; a raw
  token, as 2.1.1 peers send it, is accepted too).
* Tokens this CPO issues are 43 characters of base64url (32 random bytes);
  only their SHA-256 is stored.
* Every response is the envelope ``{data?, status_code, status_message?,
  timestamp}``; status codes are :class:`Status`.
* Lists are paged by ``offset``/``limit`` with ``Link: <next>; rel="next"``,
  ``X-Total-Count`` and ``X-Limit``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final
from urllib.parse import urlencode

from broker.consumers.ocpi.models import Envelope, encode
from common.errors import EVError
from common.timeutil import format_timestamp, parse_timestamp

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
MAX_BODY: Final = 1 << 20  # a request body larger than this is refused
CI_STRING_36: Final = 36


class Status(IntEnum):
    """OCPI status codes (status_codes.asciidoc)."""

    OK = 1000
    CLIENT_ERROR = 2000
    INVALID_PARAMETERS = 2001
    NOT_ENOUGH_INFORMATION = 2002
    UNKNOWN_LOCATION = 2003
    UNKNOWN_TOKEN = 2004
    SERVER_ERROR = 3000
    CLIENT_API_UNUSABLE = 3001
    UNSUPPORTED_VERSION = 3002
    NO_MATCHING_ENDPOINTS = 3003


class OcpiError(EVError):
    """A request refused with an OCPI status code and an HTTP status."""

    code = "invalid"

    def __init__(self, status: Status, message: str, http: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.http = http


def new_token() -> str:
    """A fresh credentials token: base64url of 32 random bytes (43 characters)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def header_tokens(value: str | None) -> tuple[str, ...]:
    """Candidate tokens of an ``Authorization: Token ...`` header: base64-decoded
    (OCPI 2.2.1) first, then as written (2.1.1 peers); empty when there is none."""
    if not value:
        return ()
    scheme, _, rest = value.strip().partition(" ")
    raw = rest.strip()
    if scheme.lower() != "token" or not raw:
        return ()
    try:
        decoded = base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return (raw,)
    return (decoded, raw) if decoded and decoded.isprintable() else (raw,)


def auth_header(token: str) -> str:
    """``Authorization`` value for a token this CPO sends (OCPI 2.2.1: base64)."""
    return "Token " + base64.b64encode(token.encode()).decode()


def envelope(
    data: Any = None, status: Status = Status.OK, message: str | None = None, *, now: float
) -> bytes:
    return encode(
        Envelope(
            status_code=int(status),
            timestamp=format_timestamp(now),
            data=data,
            status_message=message,
        )
    )


def parse_party(text: str) -> tuple[str, str]:
    """``BR-EVC`` / ``BR*EVC`` / ``BR/EVC`` -> (``BR``, ``EVC``); raises ValueError."""
    m = re.fullmatch(r"([A-Za-z]{2})[-*/ ]?([A-Za-z0-9]{3})", text.strip())
    if m is None:
        raise ValueError(
            f"--party {text!r}: expected country code and party id, e.g. BR-EVC "
            "(2 letters, 3 letters or digits)"
        )
    return m.group(1).upper(), m.group(2).upper()


def ocpi_id(value: str, size: int = CI_STRING_36) -> str:
    """An id that fits OCPI's CiString(size): as it is when it fits, else cut + hash."""
    if len(value) <= size and value.isascii() and value.isprintable():
        return value
    digest = hashlib.sha1(value.encode()).hexdigest()[:8]
    cut = "".join(c for c in value if c.isascii() and c.isprintable())[: size - 9]
    return f"{cut}-{digest}"


def evse_id(country: str, party: str, point_id: str) -> str:
    """eMI3 EVSE ID ``CC*PPP*E<id>`` (letters and digits only after the E)."""
    clean = re.sub(r"[^A-Za-z0-9]", "", point_id).upper() or "0"
    return f"{country}*{party}*E{clean}"[:48]


# --- pagination -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    offset: int
    limit: int
    date_from: float | None
    date_to: float | None


def parse_page(query: dict[str, str]) -> Page:
    """``offset``, ``limit`` (capped at :data:`MAX_LIMIT`), ``date_from``/``date_to``."""

    def integer(name: str, default: int) -> int:
        raw = query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise OcpiError(Status.INVALID_PARAMETERS, f"{name}: not an integer") from None
        if value < 0:
            raise OcpiError(Status.INVALID_PARAMETERS, f"{name}: negative")
        return value

    def when(name: str) -> float | None:
        raw = query.get(name)
        if not raw:
            return None
        try:
            return parse_timestamp(raw)
        except ValueError:
            raise OcpiError(Status.INVALID_PARAMETERS, f"{name}: not a DateTime") from None

    limit = min(integer("limit", DEFAULT_LIMIT), MAX_LIMIT)
    return Page(integer("offset", 0), limit, when("date_from"), when("date_to"))


def in_range(page: Page, last_updated: float) -> bool:
    """OCPI: ``date_from`` inclusive, ``date_to`` exclusive."""
    if page.date_from is not None and last_updated < page.date_from:
        return False
    return page.date_to is None or last_updated < page.date_to


def page_headers(base_url: str, query: dict[str, str], page: Page, total: int) -> dict[str, str]:
    """``X-Total-Count``, ``X-Limit`` and, when more follow, ``Link`` to the next page."""
    headers = {"X-Total-Count": str(total), "X-Limit": str(page.limit)}
    nxt = page.offset + page.limit
    if page.limit and nxt < total:
        q = dict(query)
        q["offset"], q["limit"] = str(nxt), str(page.limit)
        headers["Link"] = f'<{base_url}?{urlencode(q)}>; rel="next"'
    return headers


def next_link(link: str | None) -> str | None:
    """The URL of ``rel="next"`` in a ``Link`` header, if any."""
    if not link:
        return None
    for part in link.split(","):
        m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', part)
        if m:
            return m.group(1)
    return None
