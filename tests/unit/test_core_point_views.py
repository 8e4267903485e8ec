"""Cached, encoded point views: byte for byte what encoding the PointView struct gives."""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core import point_views
from broker.core.point_views import PointViews, km3, point_view
from broker.core.points import PointState
from broker.core.queues import Reservation
from common.replies import PointView
from tests.support.core_harness import Harness

ESTADOS = ("disponivel", "reservado", "carregando", "indisponivel", "offline")
finite = st.floats(allow_nan=False, allow_infinity=False)


def _point(pid: str, lat: float, lon: float, estado: str, queued: int, kw: float, price: float):
    p = PointState(id=pid, latitude=lat, longitude=lon, potencia_kw=kw, preco_kwh=price)
    # (ignored below) an estado outside the Literal on purpose
    p.estado = estado  # type: ignore[assignment]
    p.queue = [Reservation(f"r{i}", f"V{i}", pid, 0.0, 0.0, i) for i in range(queued)]
    return p


@given(
    pid=st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    estado=st.sampled_from(ESTADOS),
    queued=st.integers(0, 3),
    kw=finite.filter(lambda x: x >= 0),
    price=finite.filter(lambda x: x >= 0),
    distance=st.floats(0, math.pi * 6371.0),
    wait=st.integers(0, 10**6),
    capacity=st.integers(1, 10000),
    out_of_service=st.sampled_from(["", "maintenance", 'cable "B" \u00e9']),
)
def test_encoded_view_is_the_encoded_struct(
    pid: str,
    lat: float,
    lon: float,
    estado: str,
    queued: int,
    kw: float,
    price: float,
    distance: float,
    wait: int,
    capacity: int,
    out_of_service: str,
) -> None:
    """The cached bytes are the struct's encoding, and decode into the same struct."""
    p = _point(pid, lat, lon, estado, queued, kw, price)
    p.out_of_service, p.oos_reason = bool(out_of_service), out_of_service
    views = PointViews(capacity)
    wait_of = _waits(wait)
    expected = msgspec.json.encode([point_view(p, capacity, distance, wait_of(p))])
    assert views.encode_list([(distance, p)], wait_of) == expected
    assert views.encode_list([(distance, p)], wait_of) == expected  # cached
    two = views.encode_list([(distance, p), (distance + 1.0, p)], wait_of)
    assert msgspec.json.decode(two, type=list[PointView]) == [
        point_view(p, capacity, distance, wait_of(p)),
        point_view(p, capacity, distance + 1.0, wait_of(p)),
    ]


def _waits(minutes: int) -> Callable[[PointState], int]:
    """The wait of a busy point (an idle one waits 0, whatever this says)."""

    def wait_of(p: PointState) -> int:
        if p.session is None and p.pending is None and not p.queue:
            return 0
        return minutes

    return wait_of


@given(st.floats(0, math.pi * 6371.0))
def test_three_decimals_as_round_gives_them(distance: float) -> None:
    assert km3(distance) == round(distance, 3) or abs(distance * 1000 % 1 - 0.5) < 1e-6


def test_empty_list() -> None:
    assert PointViews(5).encode_list([], _waits(0)) == b"[]"


def test_a_cached_view_follows_every_change_of_its_point() -> None:
    p = _point("CP1", -12.0, -38.0, "disponivel", 0, 50.0, 2.0)
    views = PointViews(5)

    def decoded() -> PointView:
        raw = views.encode_list([(1.0, p)], _waits(7))
        return msgspec.json.decode(raw, type=list[PointView])[0]

    assert decoded() == point_view(p, 5, 1.0, 0)
    p.queue.append(Reservation("r", "V", "CP1", 0.0, 0.0, 1))
    assert decoded().queue_size == 1 and decoded().available is False
    p.estado = "carregando"
    assert decoded().estado == "carregando"
    p.potencia_kw, p.preco_kwh = 22.0, 1.5
    p.latitude = -12.5
    assert decoded() == point_view(p, 5, 1.0, 7)
    p.out_of_service, p.oos_reason = True, "maintenance"
    assert decoded().fora_de_servico is True and decoded().reason == "maintenance"
    assert len(views) == 1


def test_replies_follow_the_core_state() -> None:
    """Through the core: a reservation shows in the next bateria reply."""
    h = Harness()
    h.point("CP01", lat=-12.0, lon=-38.0)
    loc = {"latitude": -12.0, "longitude": -38.0}
    first = h.reply(h.request("CAR1", "bateria", nivel_bateria=50, localizacao=loc)).data
    assert first["pontos"][0]["queue_size"] == 0 and first["pontos"][0]["estado"] == "disponivel"
    h.reserve("CAR2", "CP01", eta=30)
    again = h.reply(h.request("CAR1", "bateria", nivel_bateria=50, localizacao=loc)).data
    view = again["pontos"][0]
    assert view["queue_size"] == 1 and view["estado"] == "reservado"
    assert view["available"] is False and view["espera_estimada_min"] > 0


def test_the_cache_is_bounded_and_answers_stay_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(point_views, "MAX_CACHED_VIEWS", 3)
    views = PointViews(5)
    pts = [_point(f"P{i}", -12.0, -38.0 + i / 100, "disponivel", 0, 50.0, 2.0) for i in range(5)]
    for _ in range(3):
        raw = views.encode_list([(float(i), p) for i, p in enumerate(pts)], _waits(0))
        assert raw == msgspec.json.encode(
            [point_view(p, 5, float(i), 0) for i, p in enumerate(pts)]
        )
        assert len(views) <= 3
