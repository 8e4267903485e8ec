"""The JSON Schemas the OCPI tests validate against accept the specification's own examples.

``tests/support/ocpi_schemas.py`` is written from the OCPI 2.2.1 module tables;
the files in ``data/ocpi_examples/`` are the specification's ``examples/``
(release 2.2.1) as published. A schema that refused one of them would be wrong,
and one that accepted a broken object would be useless: both are checked.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.ocpi_schemas import problems

EXAMPLES = Path(__file__).parent / "data" / "ocpi_examples"
KINDS = {"location": "Location", "session": "Session", "cdr": "CDR", "credentials": "Credentials"}


def example(name: str) -> tuple[str, Any]:
    kind = next(v for k, v in KINDS.items() if name.startswith(k))
    return kind, json.loads((EXAMPLES / name).read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_the_specifications_examples_fit(name: str) -> None:
    kind, doc = example(name)
    assert problems(kind, doc) == []


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        ("location_example.json", ["evses", 0, "status"], "FREE"),
        ("location_example.json", ["coordinates", "latitude"], "51.0"),
        ("cdr_example.json", ["total_cost"], 12.5),
        ("session_example_1_simple_start.json", ["auth_method"], "RFID"),
        ("credentials_example.json", ["roles"], []),
    ],
)
def test_a_broken_object_is_refused(name: str, path: list[Any], value: Any) -> None:
    kind, doc = example(name)
    broken = copy.deepcopy(doc)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert problems(kind, broken)


def test_missing_required_and_unknown_fields_are_refused() -> None:
    kind, doc = example("session_example_1_simple_start.json")
    del doc["cdr_token"]
    doc["surprise"] = 1
    found = " ".join(problems(kind, doc))
    assert "cdr_token" in found and "surprise" in found
