"""The compose profile ``regions``: two regions billed once in PostgreSQL through JetStream.

The stack's broker is Feira de Santana (``fsa``); the profile adds Salvador
(``broker-ssa``), a bridge per region, NATS JetStream, PostgreSQL and one
billing worker for both. Vehicles find their region's broker in
``ops/regions.toml``. A trip in each region is billed once and the ledger
equals both brokers' accounts; with Salvador's broker killed, a trip in Feira
de Santana is still billed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ops import images
from tests.compose.conftest import Stack, stack_env

pytestmark = [pytest.mark.compose, pytest.mark.slow]

FSA = (-12.2664, -38.9663)
SSA = (-12.9714, -38.5014)
DIRECTORY = "/opt/evcharge/regions.toml"  # ops/regions.toml in the image
BROKERS = (
    "--broker", "broker:5557", "--credentials", "/data/credentials/billing-regions.cred",
    "--broker", "broker-ssa:5557", "--credentials", "/data/credentials-ssa/billing-regions.cred",
)  # fmt: skip


@pytest.fixture(scope="module")
def server_images(image: str) -> dict[str, str]:
    try:
        return images.build_servers(os.environ.get("EV_BASE_IMAGE", "auto"))
    except images.ImageBuildError as exc:
        pytest.fail(f"server image build failed: {exc}")


@pytest.fixture(scope="module")
def regions(image: str, server_images: dict[str, str]) -> Iterator[Stack]:
    project = f"evtest{uuid.uuid4().hex[:10]}"
    extra = {
        **server_images,
        "COMPOSE_PROFILES": "regions",
        "EV_DRIVE_PAUSE": "3600",  # each driver drives once, at the start
        "EV_POSTGRES_PASSWORD": uuid.uuid4().hex,
        "EV_FLEET_COUNT": "1",
        "EV_SSA_FLEET_COUNT": "2",
        "EV_PUBLISH_SSA_VEHICLE": "0",
    }
    stack = Stack(project, stack_env(image, extra))
    try:
        stack.compose("up", "-d", timeout=300)
        for service in ("broker", "broker-ssa", "nats", "postgres"):
            stack.wait_healthy(service, timeout=120)
        stack.start_probe()
        yield stack
    finally:
        stack.down()


def trip(stack: Stack, vehicle: str, where: tuple[float, float]) -> dict[str, Any]:
    """A drive found through the regions directory; returns the bill."""
    code, bill = stack.vehicle(
        vehicle, "--regions", DIRECTORY, "drive", f"--lat={where[0]}", f"--lon={where[1]}",
        "--battery", "20", "--target", "40", "--capacity-kwh", "10", "--speed", "600",
        timeout=180,
    )  # fmt: skip
    assert code == 0 and bill["vehicle_id"] == vehicle
    return dict(bill)


def billing(stack: Stack, *args: str, check: bool = False) -> Any:
    return stack.compose(
        "exec", "-T", "billing-regions", "ev-broker", "billing", *args, timeout=60, check=check
    )


def ledger_sessions(stack: Stack, vehicle: str) -> list[str]:
    proc = billing(stack, "report", "--format", "json", "--vehicle", vehicle, check=True)
    accounts = json.loads(proc.stdout)["accounts"]
    return [s["session_id"] for s in accounts.get(vehicle, {}).get("sessoes", [])]


def wait_until(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_trips_in_both_regions_are_billed_once_in_postgresql(regions: Stack) -> None:
    fsa = trip(regions, "RG-FSA-1", FSA)
    ssa = trip(regions, "RG-SSA-1", SSA)
    assert fsa["id_ponto_recarga"] != ssa["id_ponto_recarga"]
    assert ssa["id_ponto_recarga"].startswith("SS")  # Salvador's broker served it

    def reconciled() -> dict[str, Any] | None:
        proc = billing(regions, "reconcile", *BROKERS, "--format", "json")
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    result = wait_until(reconciled, 90, "the ledger to equal both brokers' accounts")
    assert result["equal"] and result["sessions"] >= 2
    assert ledger_sessions(regions, "RG-FSA-1") == [fsa["session_id"]]
    assert ledger_sessions(regions, "RG-SSA-1") == [ssa["session_id"]]
    logs = regions.logs("billing-regions", tail="all")
    assert "billing ready" in logs and "Traceback" not in logs


def test_a_killed_region_does_not_stop_billing_of_the_other(regions: Stack) -> None:
    regions.docker("kill", regions.container("broker-ssa"))
    with contextlib.suppress(AssertionError):
        assert regions.state("broker-ssa").startswith("exited")
    bill = trip(regions, "RG-FSA-2", FSA)
    wait_until(
        lambda: ledger_sessions(regions, "RG-FSA-2") == [bill["session_id"]],
        60,
        "the Feira de Santana trip in the ledger while Salvador is down",
    )
    # reconcile needs every broker: with Salvador down it says so (exit 3) ...
    proc = billing(regions, "reconcile", *BROKERS, "--timeout", "2")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    # ... and once Salvador is back the ledger equals both again
    regions.docker("start", regions.container("broker-ssa"))
    regions.wait_healthy("broker-ssa", timeout=120)

    def reconciled() -> bool:
        return billing(regions, "reconcile", *BROKERS, "--format", "json").returncode == 0

    wait_until(reconciled, 90, "the ledger to equal both brokers after the restart")
