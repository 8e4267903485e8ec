"""Fleet placement (station.fleet): deterministic, inside the radius, ids PREFIX0001.."""

from __future__ import annotations

from common.geo import haversine_km
from station.fleet import make_fleet, place, station_id


def test_ids() -> None:
    assert station_id("CP", 1) == "CP0001"
    assert station_id("CP", 10000) == "CP10000"


def test_placement_is_deterministic_and_inside_radius() -> None:
    a = place(500, (-12.2664, -38.9663), 10.0, seed=7)
    assert a == place(500, (-12.2664, -38.9663), 10.0, seed=7)
    assert a != place(500, (-12.2664, -38.9663), 10.0, seed=8)
    dists = [haversine_km(-12.2664, -38.9663, lat, lon) for lat, lon in a]
    assert max(dists) <= 10.01
    assert min(dists) < 2.0 and max(dists) > 8.0  # spread over the disc


def test_make_fleet() -> None:
    fleet = make_fleet(3, (0.0, 179.99), 5.0, "ZZ", 1, 22.0, 1.5, 60.0)
    assert [c.point_id for c in fleet] == ["ZZ0001", "ZZ0002", "ZZ0003"]
    assert all(-180.0 <= c.longitude <= 180.0 for c in fleet)
    assert all(c.power_kw == 22.0 and c.price_kwh == 1.5 for c in fleet)
