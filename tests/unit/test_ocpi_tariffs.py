"""OCPI's view of the broker's tariffs: tariff.updated events into the engine's book."""

from __future__ import annotations

from broker.consumers.ocpi.mapping import Site
from broker.consumers.ocpi.tariffs import TariffCatalog
from tests.support.ocpi_schemas import check

SITE = Site("BR", "EVC")
TOU = {
    "id": "TOU", "currency": "BRL", "country_code": "XX", "party_id": "YYY",
    "elements": [{"price_components": [{"type": "TIME", "price": 0.5, "step_size": 60}]}],
}  # fmt: skip


def test_set_assign_remove_follow_the_broker() -> None:
    c = TariffCatalog(SITE)
    assert c.apply({"tariff_id": "TOU", "action": "assign", "points": "A-*"}, 1.0) is None
    assert c.apply({"tariff_id": "TOU", "action": "set", "tariff": TOU}, 1.0) is not None
    assert c.tariff_id_for("A-1", 2.0, 10.0) == "KWH-2"  # set, not yet assigned
    c.apply({"tariff_id": "TOU", "action": "assign", "points": "A-*"}, 2.0)
    assert c.tariff_id_for("A-1", 2.0, 10.0) == "TOU" and c.tariff_id_for("B", 2.0, 10.0) == "KWH-2"
    served = c.every([("A-1", 2.0, 5.0), ("B", 2.0, 5.0), ("C", 1.5, 5.0)], 10.0)
    assert [t["id"] for t in served] == ["KWH-1.5", "KWH-2", "TOU"]
    for t in served:
        check("Tariff", t)
        assert (t["country_code"], t["party_id"]) == ("BR", "EVC")
    c.apply({"tariff_id": "TOU", "action": "remove"}, 3.0)
    assert c.tariff_id_for("A-1", 2.0, 10.0) == "KWH-2" and c.get("TOU") is None


def test_an_invalid_or_unknown_event_changes_nothing() -> None:
    c = TariffCatalog(SITE)
    bad = {**TOU, "currency": "brazilian reais"}
    assert c.apply({"tariff_id": "TOU", "action": "set", "tariff": bad}, 1.0) is None
    assert c.apply({"tariff_id": "TOU", "action": "explode"}, 1.0) is None
    assert c.apply({"action": "set"}, 1.0) is None
    assert c.get("TOU") is None
