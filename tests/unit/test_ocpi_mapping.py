"""The pure OCPI parts: transport rules (wire), points as Locations (mapping), CDRs.

Every object built here is checked against the JSON Schemas written from the
OCPI 2.2.1 tables (tests/support/ocpi_schemas.py).
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.consumers.ocpi.mapping import (
    Driver,
    LocationsView,
    Site,
    cdr_of,
    location_id_of,
    session_of,
)
from broker.consumers.ocpi.wire import (
    OcpiError,
    Status,
    evse_id,
    header_tokens,
    next_link,
    ocpi_id,
    page_headers,
    parse_page,
    parse_party,
)
from common.messages import BusEvent
from tests.support.ocpi_schemas import check

SITE = Site("BR", "EVC", "BRA", "Salvador", "America/Bahia", "evcharge")
T0 = 1_765_000_000.0


def builtins(obj: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(obj))


def view(*ids: str) -> LocationsView:
    v = LocationsView(SITE)
    points = [
        {"id": pid, "latitude": -12.1 - i / 100, "longitude": -38.9, "estado": "disponivel",
         "online": True, "potencia_kw": 50.0 if i % 2 else 11.0, "preco_kwh": 2.0}
        for i, pid in enumerate(ids)
    ]  # fmt: skip
    v.load_snapshot({"seq": 10, "points": points, "queues": {}, "sessions": []}, T0)
    return v


def status(v: LocationsView, seq: int, pid: str, estado: str) -> Any:
    data = {"point_id": pid, "estado": estado, "available": False, "queue_size": 0}
    return v.apply(BusEvent(seq, T0 + seq, "point.status", data))


# --- wire ---------------------------------------------------------------------------


def test_authorization_token_base64_first_then_raw() -> None:
    encoded = base64.b64encode(b"secret-token").decode()
    assert header_tokens(f"Token {encoded}") == ("secret-token", encoded)
    assert header_tokens("Token raw_token-43chars") == ("raw_token-43chars",)
    assert (
        header_tokens("Bearer x") == ()
        and header_tokens(None) == ()
        and header_tokens("Token ") == ()
    )


@given(st.text(max_size=200))
def test_authorization_header_never_raises(value: str) -> None:
    assert isinstance(header_tokens(value), tuple)


@given(
    st.dictionaries(
        st.sampled_from(["offset", "limit", "date_from", "date_to"]), st.text(max_size=30)
    )
)
def test_page_is_parsed_or_refused_with_2001(query: dict[str, str]) -> None:
    try:
        page = parse_page(query)
    except OcpiError as exc:
        assert exc.status == Status.INVALID_PARAMETERS
    else:
        assert page.offset >= 0 and 0 <= page.limit <= 1000


def test_page_headers_link_to_the_next_page_only_when_there_is_one() -> None:
    page = parse_page({"limit": "10", "offset": "0"})
    h = page_headers("http://x/ocpi/2.2.1/locations", {"limit": "10"}, page, 25)
    assert h["X-Total-Count"] == "25" and h["X-Limit"] == "10"
    assert next_link(h["Link"]) == "http://x/ocpi/2.2.1/locations?limit=10&offset=10"
    last = parse_page({"limit": "10", "offset": "20"})
    assert "Link" not in page_headers("http://x", {}, last, 25)
    assert parse_page({"limit": "5000"}).limit == 1000


def test_party_ids_and_evse_ids() -> None:
    assert parse_party("br-evc") == ("BR", "EVC") and parse_party("NL*TNM") == ("NL", "TNM")
    with pytest.raises(ValueError):
        parse_party("BRAZIL")
    assert ocpi_id("CP01") == "CP01" and len(ocpi_id("x" * 80)) == 36
    assert ocpi_id("x" * 80) != ocpi_id("x" * 79 + "y")
    assert evse_id("BR", "EVC", "fsa-01") == "BR*EVC*EFSA01"


# --- locations ----------------------------------------------------------------------


def test_points_grouped_into_locations_by_prefix() -> None:
    assert location_id_of("FSA-01") == "FSA" and location_id_of("CP0001") == "CP0001"
    assert location_id_of("-x") == "-x" and location_id_of("a-") == "a-"
    v = view("FSA-01", "FSA-02", "CP0001")
    assert v.order == ["CP0001", "FSA"]
    loc = v.location("FSA")
    assert loc is not None and [e.uid for e in loc.evses or []] == ["FSA-01", "FSA-02"]
    check("Location", builtins(loc))
    check("Location", builtins(v.location("CP0001")))
    assert v.point_of("CP0001", None) is not None and v.evse("FSA", "CP0001") is None
    # no EVSE named at a Location of several: its first available one
    assert v.point_of("FSA", None).id == "FSA-01"  # type: ignore[union-attr]
    status(v, 11, "FSA-01", "carregando")
    # (ignored below) the point exists: the test just reported it
    assert v.point_of("FSA", None).id == "FSA-02"  # type: ignore[union-attr]
    status(v, 12, "FSA-02", "reservado")
    assert v.point_of("FSA", None) is None


def test_status_changes_are_reported_once_with_their_time() -> None:
    v = view("FSA-01", "FSA-02")
    change = status(v, 11, "FSA-01", "carregando")
    assert change is not None and (change.kind, change.evse_uid) == ("status", "FSA-01")
    assert v.evses["FSA-01"].status == "CHARGING" and v.updated["FSA-01"] == T0 + 11
    assert status(v, 12, "FSA-01", "carregando") is None  # nothing OCPI shows changed
    assert status(v, 13, "FSA-01", "indisponivel") is not None
    assert v.evses["FSA-01"].status == "OUTOFORDER"
    v.apply(BusEvent(14, T0 + 14, "point.offline", {"point_id": "FSA-01", "last_heard": "x"}))
    assert v.evses["FSA-01"].status == "UNKNOWN"
    new = v.apply(BusEvent(15, T0 + 15, "point.registered", {
        "point_id": "NEW-1", "latitude": -12.0, "longitude": -38.0, "potencia_kw": 7.0,
        "preco_kwh": 1.5,
    }))  # fmt: skip
    assert new is not None and new.kind == "new" and new.new_location
    check("EVSE", builtins(v.evses["NEW-1"]))
    assert v.location_updated("FSA") == T0 + 14


def test_out_of_service_is_inoperative_and_tariffs_follow_prices() -> None:
    v = view("A-1", "A-2")
    v.apply(
        BusEvent(
            11,
            T0,
            "point.availability",
            {"point_id": "A-1", "available": False, "reason": "x", "by": "op"},
        )
    )
    assert v.evses["A-1"].status == "INOPERATIVE"
    assert v.evses["A-2"].connectors[0].tariff_ids == ["KWH-2"]


# --- sessions and CDRs --------------------------------------------------------------

DRIVER = Driver("ocpi.NLEMS.TOK1", "peer", "NL", "EMS", "TOK1", "APP_USER", "NL-EMS-C1")
COMPLETED = {
    "session_id": "ses-0123456789ab", "vehicle_id": "ocpi.NLEMS.TOK1", "point_id": "A-1",
    "started_at": "2025-12-06T10:00:00.000Z", "ended_at": "2025-12-06T10:30:00.000Z",
    "energy_kwh": 12.3456, "price_kwh": 2.0, "cost": 24.69, "currency": "BRL",
}  # fmt: skip


def test_session_and_cdr_of_a_roaming_driver() -> None:
    v = view("A-1")
    active = session_of(SITE, DRIVER, COMPLETED, now=T0)
    check("Session", builtins(active))
    assert active.status == "ACTIVE" and active.end_date_time is None
    done = session_of(SITE, DRIVER, COMPLETED, now=T0, completed=True)
    check("Session", builtins(done))
    assert done.total_cost is not None and done.total_cost.incl_vat == 24.69
    cdr = cdr_of(SITE, DRIVER, COMPLETED, v.state.points["A-1"], now=T0)
    check("CDR", builtins(cdr))
    assert cdr.total_energy == 12.346 and cdr.total_time == 0.5
    assert cdr.cdr_location.evse_uid == "A-1" and cdr.cdr_token.uid == "TOK1"


def test_cdr_takes_the_tariff_engines_totals() -> None:
    engine = {
        "id": "ses-0123456789ab", "tariff_id": "T1", "currency": "BRL",
        "start_date_time": "2025-12-06T10:00:00Z", "end_date_time": "2025-12-06T10:45:00Z",
        "charging_periods": [{"start_date_time": "2025-12-06T10:00:00Z",
                              "dimensions": [{"type": "ENERGY", "volume": 12.346}]},
                             {"start_date_time": "2025-12-06T10:30:00Z",
                              "dimensions": [{"type": "PARKING_TIME", "volume": 0.25}]}],
        "total_energy": 12.346, "total_time": 0.75, "total_parking_time": 0.25,
        "total_energy_cost": {"excl_vat": 20.0, "incl_vat": 24.0},
        "total_parking_cost": {"excl_vat": 1.0, "incl_vat": 1.2},
        "total_cost": {"excl_vat": 21.0, "incl_vat": 25.2},
    }  # fmt: skip
    cdr = cdr_of(SITE, DRIVER, {**COMPLETED, "cdr": engine}, None, now=T0)
    check("CDR", builtins(cdr))
    assert cdr.total_cost.incl_vat == 25.2 and cdr.total_parking_time == 0.25
    assert len(cdr.charging_periods) == 2
