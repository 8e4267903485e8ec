"""The vehicle library and ``ev-vehicle`` with vehicle authentication, against a real broker.

The CLI registers its id on first use and keeps the token per broker address
(mode 0600); later commands authenticate with it, also after the broker
restarts; another user's config cannot take the id over; ``register`` and
``whoami`` say what happened; the swarm's ``--register`` mode registers every id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import stat
from pathlib import Path

import pytest

from common.errors import AlreadyRegistered, Forbidden
from tests.e2e.test_vehicle_cli_e2e import Cli
from tests.e2e.test_vehicle_library import CENTER, POINTS, FakeStations, run, wait_points
from tests.support.procs import BrokerPorts, Proc, start_broker
from vehicle.client import VehicleClient

pytestmark = pytest.mark.e2e


def test_cli_registers_on_first_use_and_keeps_the_token(
    broker: tuple[Proc, BrokerPorts], tmp_path: Path
) -> None:
    _, ports = broker
    with FakeStations(ports, POINTS):
        cli = Cli(ports.vehicle, tmp_path / "me")
        who = cli.json("--id", "AUTH1", "whoami")
        assert who["token_stored"] is False and who["authenticated"] is False
        reserved = cli.json("--id", "AUTH1", "reserve", "VP01")
        assert reserved["code"] == "reserved"
        token_file = Path(who["token_file"])
        assert token_file.name == f"127.0.0.1_{ports.vehicle}.json"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        token = json.loads(token_file.read_text())["AUTH1"]
        assert len(token) == 43
        who = cli.json("--id", "AUTH1", "whoami")
        assert who["token_stored"] is True and who["authenticated"] is True
        assert cli.json("--id", "AUTH1", "status")["reserva"]["id_ponto_recarga"] == "VP01"
        reg = cli.json("--id", "AUTH1", "register")
        assert reg["code"] == "authenticated"
        # somebody else's config: the id is taken, a clear refusal, nothing changes
        other = Cli(ports.vehicle, tmp_path / "other")
        taken = other("--id", "AUTH1", "cancel", "VP01")
        assert taken.returncode == 1 and "already_registered" in taken.stderr
        assert "Traceback" not in taken.stderr
        assert cli.json("--id", "AUTH1", "status")["reserva"] is not None
        fresh = other.json("--id", "AUTH2", "register")
        assert fresh["code"] == "registered"


def test_library_authenticates_again_after_a_broker_restart(
    tmp_path: Path, ports: BrokerPorts
) -> None:
    db = str(tmp_path / "broker.db")
    proc = start_broker(ports, db, "--offline-after", "1.5")
    try:
        with FakeStations(ports, POINTS):
            tokens: list[str] = []

            async def first() -> None:
                async with VehicleClient(
                    ports.host, ports.vehicle, "LIBAUTH", register=True, on_token=tokens.append
                ) as c:
                    await wait_points(c, 3)
                    assert (await c.reserva("VP01"))["code"] == "reserved"

            run(first)
            assert len(tokens) == 1

            async def again() -> None:
                nonlocal proc
                c = VehicleClient(
                    ports.host, ports.vehicle, "LIBAUTH", token=tokens[0], backoff_max=0.2
                )
                async with c:
                    assert (await c.status())["reserva"]["id_ponto_recarga"] == "VP01"
                    proc.kill9()
                    proc.stop()
                    proc = start_broker(ports, db, "--offline-after", "1.5")
                    for _ in range(400):  # reconnects and proves its id by itself
                        if c.connected and c.reconnects >= 1:
                            break
                        await asyncio.sleep(0.05)
                    assert c.reconnects >= 1 and c.connected
                    assert (await c.cancelar("VP01"))["code"] == "cancelled"
                    await wait_points(c, 3)
                    assert (await c.reserva("VP02"))["code"] == "reserved"

            run(again, limit=60)

            async def impostor() -> None:
                with pytest.raises(AlreadyRegistered):
                    async with VehicleClient(ports.host, ports.vehicle, "LIBAUTH", register=True):
                        pass
                with pytest.raises(Forbidden):
                    async with VehicleClient(
                        ports.host, ports.vehicle, "LIBAUTH", token="x" * 43, reconnect=False
                    ):
                        pass

            run(impostor)
    finally:
        proc.stop()


def test_swarm_register_mode(broker: tuple[Proc, BrokerPorts], tmp_path: Path) -> None:
    _, ports = broker
    with FakeStations(ports, POINTS):
        cli = Cli(ports.vehicle, tmp_path / "config")
        lat, lon = CENTER
        args = ["swarm", "--count", "20", "--duration", "1.5", "--center", f"{lat},{lon}"]
        out = cli.json(*args, "--radius-km", "5", "--seed", "4", "--register")
        assert out["connected"] == 20 and out["requests"] > 50
        assert out["auth_ms"]["p50"] > 0
        assert set(out["errors"]) <= {"timeout"}, out["errors"]
        assert "unauthenticated" not in out["errors"]


def test_a_client_told_already_registered_uses_the_token_kept_meanwhile(
    broker: tuple[Proc, BrokerPorts],
) -> None:
    """Two programs with one token store register the same id at once: the loser of
    the race reads the winner's token from the store and authenticates with it."""
    _, ports = broker
    kept: list[str] = []

    async def race() -> None:
        async with VehicleClient(
            ports.host, ports.vehicle, "RACE1", register=True, on_token=kept.append
        ):
            pass
        assert len(kept) == 1
        loop = asyncio.get_running_loop()
        store: dict[str, str] = {}
        # the winner keeps its token a moment after the loser was refused
        loop.call_later(0.3, store.update, {"RACE1": kept[0]})
        async with VehicleClient(
            ports.host, ports.vehicle, "RACE1", register=True, load_token=lambda: store.get("RACE1")
        ) as late:
            assert late.token == kept[0]
            assert (await late.status())["reserva"] is None
        # nobody keeps a token: the refusal stands (after the short look at the store)
        with pytest.raises(AlreadyRegistered):
            async with VehicleClient(
                ports.host, ports.vehicle, "RACE1", register=True, load_token=lambda: None
            ):
                pass

    run(race)


def test_commands_started_together_with_one_config_all_prove_the_id(
    broker: tuple[Proc, BrokerPorts], tmp_path: Path
) -> None:
    _, ports = broker
    cli = Cli(ports.vehicle, tmp_path / "shared")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: cli("--json", "--id", "RACE2", "status"), range(4)))
    for r in results:
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["reserva"] is None
    token_file = Path(cli.json("--id", "RACE2", "whoami")["token_file"])
    assert len(json.loads(token_file.read_text())["RACE2"]) == 43
