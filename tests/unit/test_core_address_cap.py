"""``--max-reservations-per-address`` (security contract, "Queues are not free").

The attack: five throwaway ids from one address filled a point's queue, so a real
driver got ``queue_full``. The core counts live reservations per network address
(passed in with each request, whatever edge or gateway forwards it).
"""

from __future__ import annotations

import msgspec

from common.messages import REQUEST_TYPES, VehicleRequest
from tests.support.core_harness import Harness, wire


# (ignored below) the reply is plain decoded JSON
def reserve_from(h: Harness, vid: str, pid: str, address: str, conn: int = 7) -> dict:  # type: ignore[type-arg]
    data = msgspec.convert({"id_veiculo": vid, "id_ponto_recarga": pid}, REQUEST_TYPES["reserva"])
    fx = h.apply(h.core.handle_request(conn, vid, VehicleRequest("reserva", data), h.now, address))
    (reply,) = [e for e in fx if type(e).__name__ == "Reply"]
    # (ignored below) reply data is a struct here; the test reads its wire form
    return {"type": reply.type, **wire(reply.data)}  # type: ignore[attr-defined]


def test_one_address_holds_at_most_the_cap_of_live_reservations() -> None:
    h = Harness(queue_capacity=5, max_reservations_per_address=3)
    for i in range(5):
        h.point(f"CP{i}")
    for i in range(3):
        assert reserve_from(h, f"throw{i}", f"CP{i}", "203.0.113.9")["type"] == "reserva_response"
    refused = reserve_from(h, "throw3", "CP3", "203.0.113.9")
    assert refused["type"] == "erro" and refused["code"] == "rate_limited"
    assert h.core.stats()["reservations_rate_limited"] == 1
    # a driver elsewhere is not affected
    assert reserve_from(h, "driver", "CP3", "198.51.100.4")["code"] == "reserved"
    # a reservation that ends frees a place for that address
    h.request("throw0", "cancelar", conn=7, id_ponto_recarga="CP0")
    assert reserve_from(h, "throw3", "CP4", "203.0.113.9")["code"] == "reserved"
