"""Hostile vehicle input: Hypothesis strategies for the suite, a fast generator for the soak.

Both make the same kinds of input: every request type (and unknown ones) with
fields of the wrong type, extreme numbers, NaN/Infinity, huge strings, deep
nesting, unknown fields, and raw byte streams with invalid UTF-8, stray
brackets and half objects. A document is one line of bytes (no newline inside
unless the generator means it).
"""

from __future__ import annotations

import json
import random
from typing import Any, Final

from hypothesis import strategies as st

from common.messages import REQUEST_TYPES

TYPES: Final = [*REQUEST_TYPES, "voar", "", "PING", "erro", "pontos_disponiveis"]
FIELDS: Final = [
    "id_veiculo",
    "nivel_bateria",
    "localizacao",
    "latitude",
    "longitude",
    "timestamp",
    "distancia_max",
    "limite",
    "id_ponto_recarga",
    "tempo_estimado",
    "nivel_carregar",
    "metodo_pagamento",
    "capacidade_kwh",
    "token",
    "zzz_unknown",
]
EXTREME_NUMBERS: Final = [
    0,
    -1,
    1e308,
    -1e308,
    5e-324,
    2**63,
    -(2**63) - 1,
    2**200,
    float("nan"),
    float("inf"),
    float("-inf"),
    100.0000001,
    -90.5,
    181,
]
HUGE: Final = ["x" * 70_000, "é" * 30_000, "\u0000" * 1000, "\ud83d\ude00" * 5000]


def _deep(depth: int, array: bool) -> str:
    return ("[" * depth + "]" * depth) if array else ('{"a":' * depth + "1" + "}" * depth)


# --- Hypothesis strategies (the suite) ----------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EXTREME_NUMBERS),
    st.text(max_size=80),
    st.sampled_from(["CAR1", "CP01", "Pix", "2025-04-07T10:00:00", "9999-99-99", "A" * 65]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """One JSON-ish request line: a request of any type with hostile fields."""
    data = draw(st.dictionaries(st.sampled_from(FIELDS), values, max_size=8))
    doc: dict[str, Any] = {"type": draw(st.sampled_from(TYPES)), "data": data}
    if draw(st.booleans()):
        doc["id"] = draw(values)
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["extra", "type2", "datas"]))] = draw(values)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    special = draw(st.sampled_from(["none", "none", "none", "huge", "deep", "utf8", "cut"]))
    if special == "huge":
        text = text[:-1] + f',"pad":"{draw(st.sampled_from(HUGE))}"}}'
    elif special == "deep":
        nested = _deep(draw(st.integers(100, 100_000)), draw(st.booleans()))
        text = text[:-1] + f',"nest":{nested}}}'
    elif special == "cut":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    raw = text.encode("utf-8", "surrogatepass")
    if special == "utf8":
        at = draw(st.integers(0, len(raw)))
        raw = (
            raw[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]))
            + raw[at:]
        )
    return raw.replace(b"\n", b" ")


byte_streams = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\", b"\n", b"{}", b" ", b"\xff"]),
             max_size=400).map(b"".join),
)  # fmt: skip


# --- the soak's generator (fast, no Hypothesis) ------------------------------------------------


class Generator:
    """Hostile lines from a seeded ``random.Random``: about 20 us each."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        pick = r.random()
        if pick < 0.25:
            return r.choice(EXTREME_NUMBERS)
        if pick < 0.45:
            return "".join(chr(r.randrange(32, 0x2FF)) for _ in range(r.randrange(0, 20)))
        if pick < 0.55:
            return r.choice([None, True, False, "CAR1", "CP01", "Pix", "2025-04-07T10:00:00"])
        if pick < 0.7:
            return r.uniform(-1e6, 1e6)
        if depth < 3 and pick < 0.85:
            return {r.choice(FIELDS): self.value(depth + 1) for _ in range(r.randrange(0, 4))}
        if depth < 3:
            return [self.value(depth + 1) for _ in range(r.randrange(0, 4))]
        return r.randrange(-(2**40), 2**40)

    def document(self) -> bytes:
        r = self.rng
        kind = r.random()
        if kind < 0.05:
            return bytes(r.randrange(256) for _ in range(r.randrange(1, 200))).replace(b"\n", b"")
        data = {f: self.value() for f in r.sample(FIELDS, r.randrange(0, 7))}
        doc: dict[str, Any] = {"type": r.choice(TYPES), "data": data}
        if r.random() < 0.5:
            doc["id"] = self.value(3)
        text = json.dumps(doc)
        if kind < 0.08:
            text = text[:-1] + f',"pad":"{r.choice(HUGE)}"}}'
        elif kind < 0.11:
            text = text[:-1] + f',"nest":{_deep(r.randrange(100, 20_000), r.random() < 0.5)}}}'
        elif kind < 0.16:
            text = text[: r.randrange(0, len(text))]
        raw = text.encode("utf-8", "surrogatepass")
        if r.random() < 0.05:
            at = r.randrange(0, len(raw) + 1)
            raw = raw[:at] + r.choice([b"\xff", b"\xc3", b"\xed\xa0\x80"]) + raw[at:]
        return raw.replace(b"\n", b" ")
