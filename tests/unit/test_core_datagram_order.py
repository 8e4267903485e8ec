"""The datagram ordering rule, owned by the core: stale and replayed datagrams.

Within a point's current ``boot_id`` a ``seq`` not above the last one seen is
refused (``stale``; ``replayed`` for a signed datagram); a new boot starts over,
but a signed datagram of a new boot only when its ``ts`` is later than the last
accepted signed datagram's. A refused datagram changes nothing. Random streams
(datagrams, signed or not, and hellos of any boot, on a fake clock) are checked
against a small model of that rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.effects import Effect, Rejected
from tests.support.core_harness import Harness

BOOTS = ("a", "b", "c")


@dataclass
class OrderModel:
    """The rule as security.md and protocol.md state it, for one point."""

    registered: bool = False
    boot: str | None = None
    seq: int | None = None
    ts: float = -math.inf

    def datagram(self, boot: str, seq: int, signed_ts: float | None) -> str | None:
        """The refusal (``stale`` / ``replayed``), or None when the datagram is taken."""
        refused = "stale" if signed_ts is None else "replayed"
        if self.registered and boot == self.boot:
            if self.seq is not None and seq <= self.seq:
                return refused
        elif self.registered and signed_ts is not None and signed_ts <= self.ts:
            return refused
        self.registered, self.boot, self.seq = True, boot, seq
        if signed_ts is not None:
            self.ts = signed_ts
        return None

    def hello(self, boot: str) -> None:
        if not self.registered or boot != self.boot:
            self.registered, self.boot, self.seq = True, boot, None


datagram_s = st.tuples(
    st.just("datagram"),
    st.sampled_from(BOOTS),
    st.integers(-2, 6),  # seq
    st.booleans(),  # signed
    st.integers(-5, 0),  # ts relative to the clock (a replay carries an old one)
    st.sampled_from(["disponivel", "indisponivel"]),
    st.integers(0, 2),  # seconds the clock moves on before
)
hello_s = st.tuples(st.just("hello"), st.sampled_from(BOOTS))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(datagram_s, datagram_s, datagram_s, hello_s), max_size=40))
def test_only_datagrams_newer_than_the_last_are_applied(stream: list[tuple[Any, ...]]) -> None:
    h = Harness()
    model = OrderModel()
    refusals = {"stale": 0, "replayed": 0}
    for item in stream:
        if item[0] == "hello":
            h.hello("CP01", boot=item[1])
            model.hello(item[1])
            continue
        _, boot, seq, signed, ts_back, estado, advance = item
        h.at(float(advance))
        signed_ts = h.now + ts_back if signed else None
        before = h.core.snapshot(h.now)
        fx = h.dgram("CP01", boot_id=boot, seq=seq, estado=estado, signed_ts=signed_ts)
        expected = model.datagram(boot, seq, signed_ts)
        if expected is None:
            assert not [e for e in fx if isinstance(e, Rejected)]
            point = h.core.snapshot(h.now)["points"][0]
            assert point["estado"] == estado
        else:
            refusals[expected] += 1
            assert len(fx) == 1 and isinstance(fx[0], Rejected)
            assert (fx[0].edge, fx[0].reason) == ("status", expected)
            assert h.core.snapshot(h.now) == before  # nothing applied
    stats = h.core.stats()
    assert (stats["datagrams_stale"], stats["datagrams_replayed"]) == (
        refusals["stale"],
        refusals["replayed"],
    )
    taken = sum(1 for item in stream if item[0] == "datagram") - sum(refusals.values())
    assert stats["datagrams"] == taken


def _refusals(fx: list[Effect]) -> list[str]:
    return [e.reason for e in fx if isinstance(e, Rejected)]


def test_a_replayed_older_boot_is_refused_and_a_later_one_taken() -> None:
    h = Harness()
    assert _refusals(h.dgram("CP01", boot_id="a", seq=5, signed_ts=h.now)) == []
    h.at(1.0)
    assert _refusals(h.dgram("CP01", boot_id="b", seq=1, signed_ts=h.now)) == []
    captured = h.now - 1.0  # a datagram of boot "a", sent before "b" started
    assert _refusals(h.dgram("CP01", boot_id="a", seq=6, signed_ts=captured)) == ["replayed"]
    assert _refusals(h.dgram("CP01", boot_id="b", seq=1, signed_ts=h.now)) == ["replayed"]
    h.at(1.0)
    assert _refusals(h.dgram("CP01", boot_id="c", seq=1, signed_ts=h.now)) == []


def test_a_datagram_without_boot_id_is_ordered_by_seq_alone() -> None:
    h = Harness()
    h.dgram("CP01", boot_id=None, seq=3)
    assert _refusals(h.dgram("CP01", boot_id=None, seq=3)) == ["stale"]
    assert _refusals(h.dgram("CP01", boot_id=None, seq=4)) == []


def test_the_first_datagram_after_a_hello_takes_any_seq() -> None:
    h = Harness()
    h.hello("CP01", boot="a")
    assert _refusals(h.dgram("CP01", boot_id="a", seq=-1)) == []
    assert _refusals(h.dgram("CP01", boot_id="a", seq=-1)) == ["stale"]
