"""Site definitions (energy.md, "Sites"): what an operator may define, checked once.

A site is a name, a limit in kW (finite, above 0, at most 100,000), a minimum per
session and point patterns (the credentials' patterns); a point belongs to at
most one site. :func:`check_site` is the one check, used by the core and by
``ev-broker sites --db``; a refusal is :class:`common.errors.SiteRefused` naming
the field, and nothing is stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from broker.core.allocation import DEFAULT_MIN_W
from common.credentials import check_pattern, point_matches
from common.errors import ConfigError, SiteRefused

SITE_PREFIX: Final = "site:"  # meta records of site definitions
MAX_SITE_KW: Final = 100_000.0
DEFAULT_MIN_KW: Final = DEFAULT_MIN_W / 1000.0
MAX_SITE_NAME: Final = 64
MAX_PATTERNS: Final = 64


@dataclass(frozen=True, slots=True)
class SiteDef:
    """An operator's site: a name, a limit, a minimum per session and point patterns."""

    name: str
    limit_kw: float
    min_kw: float
    points: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "limit_kw": self.limit_kw,
            "min_kw": self.min_kw,
            "points": list(self.points),
        }

    @classmethod
    def from_record(cls, v: Mapping[str, Any]) -> SiteDef:
        return cls(
            name=str(v["name"]),
            limit_kw=float(v["limit_kw"]),
            min_kw=float(v["min_kw"]),
            points=tuple(str(p) for p in v["points"]),
        )


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SiteRefused(f"{field}: a number is required")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise SiteRefused(f"{field}: must be a finite number above 0 (got {value!r})")
    return number


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some point id matches both patterns."""
    if a.endswith("*") and b.endswith("*"):
        return a[:-1].startswith(b[:-1]) or b[:-1].startswith(a[:-1])
    if a.endswith("*"):
        return point_matches(a, b)
    if b.endswith("*"):
        return point_matches(b, a)
    return a == b


def check_site(
    name: Any,
    limit_kw: Any,
    points: Any,
    min_kw: Any,
    others: Iterable[SiteDef],
    known: Mapping[str, bool],
) -> SiteDef:
    """The definition when the broker can take it; :class:`SiteRefused` saying why.

    ``others``: the other sites; ``known``: every known point id and whether its
    station takes limits (its hello said ``"limites": true``).
    """
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_SITE_NAME:
        raise SiteRefused(f"name: a string of 1-{MAX_SITE_NAME} characters is required")
    if any(c.isspace() for c in name):
        raise SiteRefused(f"name: {name!r} has spaces")
    limit = _number(limit_kw, "limit_kw")
    if limit > MAX_SITE_KW:
        raise SiteRefused(f"limit_kw: at most {MAX_SITE_KW:g} kW (got {limit:g})")
    minimum = DEFAULT_MIN_KW if min_kw is None else _number(min_kw, "min_kw")
    if minimum > limit:
        raise SiteRefused(f"min_kw: {minimum:g} kW is above the site's limit {limit:g} kW")
    if isinstance(points, str):
        points = [points]
    if not isinstance(points, list | tuple) or not points or len(points) > MAX_PATTERNS:
        raise SiteRefused(f"points: 1-{MAX_PATTERNS} point patterns are required")
    patterns: list[str] = []
    for pattern in points:
        if not isinstance(pattern, str):
            raise SiteRefused("points: every pattern must be a string")
        try:
            patterns.append(check_pattern(pattern))
        except ConfigError as exc:
            raise SiteRefused(f"points: {exc.message}") from None
    for other in others:
        if other.name == name:
            continue
        for mine in patterns:
            for theirs in other.points:
                if patterns_overlap(mine, theirs):
                    raise SiteRefused(
                        f"points: {mine!r} overlaps site {other.name!r} ({theirs!r}); "
                        "a point belongs to at most one site"
                    )
    unable = sorted(
        pid
        for pid, limites in known.items()
        if not limites and any(point_matches(p, pid) for p in patterns)
    )
    if unable:
        shown = ", ".join(unable[:5]) + (" ..." if len(unable) > 5 else "")
        raise SiteRefused(
            f"points: {shown} cannot take limits (their stations do not say "
            '"limites": true); such points cannot be put in a site'
        )
    return SiteDef(name, limit, minimum, tuple(dict.fromkeys(patterns)))
