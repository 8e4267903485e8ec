"""Cached, encoded point views: byte for byte what encoding the dict view gives."""

from __future__ import annotations

import math

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from broker.core.point_views import PointViews, view_dict
from broker.core.points import PointState
from broker.core.queues import Reservation
from tests.unit.test_core_harness import Harness

ESTADOS = ("disponivel", "reservado", "carregando", "indisponivel", "offline")
finite = st.floats(allow_nan=False, allow_infinity=False)


def _point(pid: str, lat: float, lon: float, estado: str, queued: int, kw: float, price: float):
    p = PointState(id=pid, latitude=lat, longitude=lon, potencia_kw=kw, preco_kwh=price)
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
)
def test_encoded_view_is_the_encoded_dict(
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
) -> None:
    p = _point(pid, lat, lon, estado, queued, kw, price)
    views = PointViews(capacity)
    expected = msgspec.json.encode([view_dict(p, capacity, distance, wait)])
    assert views.encode_list([(distance, p, wait)]) == expected
    assert views.encode_list([(distance, p, wait)]) == expected  # from the cache
    two = views.encode_list([(distance, p, wait), (distance + 1.0, p, 0)])
    assert msgspec.json.decode(two) == [
        view_dict(p, capacity, distance, wait),
        view_dict(p, capacity, distance + 1.0, 0),
    ]


def test_empty_list() -> None:
    assert PointViews(5).encode_list([]) == b"[]"


def test_a_cached_view_follows_every_change_of_its_point() -> None:
    p = _point("CP1", -12.0, -38.0, "disponivel", 0, 50.0, 2.0)
    views = PointViews(5)

    def decoded() -> dict[str, object]:
        out: list[dict[str, object]] = msgspec.json.decode(views.encode_list([(1.0, p, 0)]))
        return out[0]

    assert decoded() == view_dict(p, 5, 1.0, 0)
    p.queue.append(Reservation("r", "V", "CP1", 0.0, 0.0, 1))
    assert decoded()["queue_size"] == 1 and decoded()["available"] is False
    p.estado = "carregando"
    assert decoded()["estado"] == "carregando"
    p.potencia_kw, p.preco_kwh = 22.0, 1.5
    p.latitude = -12.5
    assert decoded() == view_dict(p, 5, 1.0, 0)
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
