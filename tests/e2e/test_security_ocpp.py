"""The OCPP gateway against a password guesser and rogue walk-ins (second round).

The attacks: 1,000 wrong passwords from one address were each checked (2.2 ms of
PBKDF2) and logged; an unknown charger id was refused faster than a known one with a
wrong password (ids could be enumerated); any charger could start a walk-in billed to
any unregistered vehicle id.
"""

from __future__ import annotations

import statistics
import time

import pytest

from station.ocpp.guard import IdTags, LoginGuard
from tests.e2e.test_ocpp_gateway import (  # noqa: F401 (fixtures)
    broker,
    chargers,
    connect_status,
    gateway,
    sims,
    wait_estado,
)
from tests.support.ocpp_sims import PASSWORD, SimLoop
from tests.support.procs import Proc
from tests.support.raw_clients import Vehicle

pytestmark = pytest.mark.e2e


def test_ten_failures_from_an_address_get_429_for_a_minute(
    gateway: tuple[Proc, str],  # noqa: F811
) -> None:
    proc, url = gateway
    codes = [connect_status(url, "OC01", f"wrong-{i}", ["ocpp1.6"]) for i in range(10)]
    assert codes == [401] * 10
    # blocked: even the right password is refused, without a check
    assert connect_status(url, "OC01", PASSWORD, ["ocpp1.6"]) == 429
    assert connect_status(url, "NOPE", "x", ["ocpp1.6"]) == 429
    time.sleep(1.5)  # the refusal log line of this second
    refusals = [line for line in proc.lines if "refused" in line]
    assert len(refusals) <= 4, refusals  # throttled: not one line per attempt


def test_an_unknown_id_costs_the_same_as_a_wrong_password() -> None:
    import asyncio

    from station.ocpp.passwords import hash_password, verify_password

    stored = hash_password(PASSWORD, 20_000)
    guard = LoginGuard(20_000)

    def timed(check: object) -> float:
        t0 = time.perf_counter()
        # (ignored below) the coroutine is built by the helper above
        asyncio.run(check)  # type: ignore[arg-type]
        return time.perf_counter() - t0

    async def wrong() -> bool:
        return await asyncio.to_thread(verify_password, "wrong", stored)

    known = [timed(wrong()) for _ in range(15)]
    unknown = [timed(guard.dummy_check("wrong")) for _ in range(15)]
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.6 < ratio < 1.6, (ratio, known, unknown)


def test_only_authorized_id_tags_walk_in_and_never_as_a_vehicle() -> None:
    tags = IdTags(["RFID042"])
    assert tags.account_for("RFID042") == "idtag.RFID042"
    assert tags.account_for("VICTIM1") is None  # a vehicle id, not an authorized tag
    raw = {"idtag": [{"id": "RFID042"}, {"id": "CARD-7"}]}
    assert len(IdTags.from_file(raw)) == 2


def test_an_unlisted_id_tag_cannot_start_a_walk_in(
    gateway: tuple[Proc, str],  # noqa: F811
    broker: tuple[Proc, object],  # noqa: F811
    sims: SimLoop,  # noqa: F811
) -> None:
    _, url = gateway
    # (ignored below) the fixture's tuple is untyped here
    car = Vehicle(broker[1].vehicle, "VICTIM9")  # type: ignore[attr-defined]
    try:
        sim = sims.add(url, "OC01", speed=100, meter_every_s=0.1)
        wait_estado(car, "OC01", "disponivel")
        assert sims.run(sim.local_start("VICTIM9")) == "Invalid"
        assert car.ask("custos")["data"]["sessoes"] == []
    finally:
        car.close()
