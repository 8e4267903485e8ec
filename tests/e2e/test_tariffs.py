"""Tariffs end to end: a real broker, real simulated stations, a raw TCP vehicle, and
billing workers writing a SQLite ledger and a PostgreSQL ledger.

Three sessions run at once: a start fee with a per-minute price, a car left
plugged in after charging (``--dwell``: parking billed for the seconds it
stayed), and a session crossing a time-of-day price change (it starts just
before a minute boundary, where the tariff's price changes). Each is billed
exactly once, with the same CDR in the broker's push, its accounts, the SQLite
ledger and the PostgreSQL ledger. Bad input: an invalid tariff file is refused
with one message naming the field (exit 2, nothing stored); a gap warns.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from broker.consumers.billing.backends import open_ledger
from tests.support.procs import (
    BrokerPorts,
    Proc,
    running,
    start,
    start_broker_on_free_ports,
)
from tests.support.raw_clients import Vehicle, wait_for
from tests.support.servers import Postgres, need_servers, postgres

pytestmark = pytest.mark.e2e

LAT, LON = -12.2664, -38.9663
SPEED = "1500"  # 36 kWh at 50 kW: 2592 simulated seconds, about 1.7 s
LEAD_S = 20  # the price change comes this long after the broker starts
ZONE = "Test/Tariff_Change"


def zone_file(folder: Path, offset_s: int) -> None:
    """A TZif file (no transitions) for a zone ``offset_s`` seconds east of UTC, so that
    the test chooses where the local minutes (the tariff's time of day) begin."""
    name = b"TST\0"
    header = b"TZif" + b"\0" * 16 + struct.pack(">6l", 0, 0, 0, 0, 1, len(name))
    path = folder / ZONE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + struct.pack(">lBB", offset_s, 0, 0) + name)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args], capture_output=True, text=True, timeout=30
    )


def tariffs(ports: BrokerPorts, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "tariffs", *args, "--broker", "127.0.0.1", "--history-port", str(ports.history),
        *ports.cred_args("operator"),
    )  # fmt: skip


def station(ports: BrokerPorts, point: str, lat: float, *extra: str) -> list[str]:
    return [
        "python", "-m", "station", "run", "--id", point, "--lat", str(lat), "--lon", str(LON),
        "--power-kw", "50", "--price-kwh", "2.0", "--interval", "0.5", "--speed", SPEED,
        "--status-port", str(ports.status), "--station-port", str(ports.station),
        *ports.cred_args("station"), *extra,
    ]  # fmt: skip


def billing(ports: BrokerPorts, *ledger: str) -> list[str]:
    return [
        "python", "-m", "broker", "billing", "--broker", "127.0.0.1",
        "--events-port", str(ports.events), "--history-port", str(ports.history),
        *ports.cred_args(), *ledger,
    ]  # fmt: skip


def arrive(car: Vehicle, point: str) -> None:
    reply = car.ask(
        "chegada",
        id_ponto_recarga=point,
        nivel_bateria=20,
        nivel_carregar=80,
        metodo_pagamento="Pix",
        capacidade_kwh=60,
    )
    assert reply["data"]["code"] == "started", reply


def cents(x: Decimal) -> float:
    return float(x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    need_servers()
    with postgres() as server:
        yield server


@pytest.fixture
def zoned(
    tmp_path: Path, ports: BrokerPorts, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[float, int, BrokerPorts]]:
    """A broker whose site zone starts a local minute LEAD_S seconds from now: that
    instant (epoch) and the zone's offset (seconds east of UTC)."""
    change = float(int(time.time()) + LEAD_S)
    offset = -int(change) % 60  # local = UTC + offset: a whole local minute at ``change``
    zone_file(tmp_path / "zones", offset)
    monkeypatch.setenv("PYTHONTZPATH", str(tmp_path / "zones"))
    proc = start_broker_on_free_ports(ports, str(tmp_path / "broker.db"), "--timezone", ZONE)
    try:
        yield change, offset, ports
    finally:
        proc.stop()


@pytest.fixture
def cars(zoned: tuple[float, int, BrokerPorts]) -> Iterator[list[Vehicle]]:
    port = zoned[2].vehicle
    made = [Vehicle(port, f"CART{i}") for i in range(3)]
    try:
        yield made
    finally:
        for c in made:
            c.close()


def test_three_tariffs_billed_once_and_equal_everywhere(
    zoned: tuple[float, int, BrokerPorts], cars: list[Vehicle], pg: Postgres, tmp_path: Path
) -> None:
    change, offset, ports = zoned

    def tod_tariff(at: float) -> dict[str, Any]:
        """3.00 / kWh for half an hour from the local minute that begins at ``at``."""

        def local(t: float) -> str:
            return (datetime.fromtimestamp(t, UTC) + timedelta(seconds=offset)).strftime("%H:%M")

        return {"id": "tod", "currency": "BRL", "elements": [
            {"price_components": [{"type": "ENERGY", "price": 3.00, "step_size": 0}],
             "restrictions": {"start_time": local(at), "end_time": local(at + 1800)}},
            {"price_components": [{"type": "ENERGY", "price": 1.00, "step_size": 0}]}]}  # fmt: skip

    docs = [
        {"id": "minute", "currency": "BRL", "elements": [{"price_components": [
            {"type": "FLAT", "price": 2.50, "vat": 20, "step_size": 1},
            {"type": "TIME", "price": 12.00, "step_size": 1}]}]},
        {"id": "idle", "currency": "BRL", "elements": [{"price_components": [
            {"type": "ENERGY", "price": 2.00, "step_size": 1},
            {"type": "PARKING_TIME", "price": 36.00, "step_size": 1}]}]},
        tod_tariff(change),
    ]  # fmt: skip
    (tmp_path / "t.json").write_text(json.dumps(docs))
    out = tariffs(ports, "set", str(tmp_path / "t.json"))
    assert out.returncode == 0, out.stderr
    for tid, pattern in (("minute", "TM*"), ("idle", "TI*"), ("tod", "TD*")):
        assert tariffs(ports, "assign", tid, "--points", pattern).returncode == 0
    pg_url = pg.create_database(f"t{uuid.uuid4().hex[:10]}")
    sqlite_db = tmp_path / "billing.db"
    with (
        running(billing(ports, "--db", str(sqlite_db)), ready="billing ready"),
        running(billing(ports, "--ledger", pg_url), ready="billing ready"),
        running(station(ports, "TM01", LAT), ready="welcomed by the broker"),
        running(station(ports, "TI01", LAT - 0.01, "--dwell", "2"), ready="welcomed by"),
        running(station(ports, "TD01", LAT - 0.02), ready="welcomed by the broker"),
    ):
        minute, idle, tod = cars
        arrive(minute, "TM01")
        arrive(idle, "TI01")
        bills = {
            "minute": minute.push("custo_final", timeout=15)["data"],
            "idle": idle.push("custo_final", timeout=15)["data"],
        }
        # start the third so that it charges across the change (local time of the site);
        # when setting up took longer than LEAD_S, the change moves to a later minute
        if time.time() > change - 4.0:
            change += 60.0 * math.ceil((time.time() + 8.0 - change) / 60.0)
            (tmp_path / "tod.json").write_text(json.dumps(tod_tariff(change)))
            assert tariffs(ports, "set", str(tmp_path / "tod.json")).returncode == 0
        wait_for(lambda: time.time() >= change - 0.8, timeout=90, what="the price change")
        arrive(tod, "TD01")
        bills["tod"] = tod.push("custo_final", timeout=15)["data"]

        # a start fee and a per-minute price: 2.50 + 20 % VAT, then 12.00 / h
        b = bills["minute"]
        cdr = b["cdr"]
        seconds = Decimal(str(b["duracao_s"]))
        assert cdr["total_fixed_cost"] == {"excl_vat": 2.5, "incl_vat": 3.0}
        assert abs(b["cost"] - cents(Decimal("3.00") + Decimal(12) * seconds / 3600)) <= 0.01
        assert cdr["total_parking_time"] == 0

        # parking for the seconds the car stayed plugged in (the station's dwell: 2 s)
        b = bills["idle"]
        cdr = b["cdr"]
        parked = Decimal(str(cdr["total_parking_time"])) * 3600
        assert Decimal("1.7") <= parked <= Decimal("3.5"), cdr
        assert cdr["total_energy_cost"]["excl_vat"] == 72.0
        assert abs(cdr["total_parking_cost"]["excl_vat"] - float(parked / 100)) <= 0.01
        assert b["cost"] == round(72.0 + cdr["total_parking_cost"]["incl_vat"], 2)
        assert [p["dimensions"][0]["type"] for p in cdr["charging_periods"]] == [
            "ENERGY",
            "PARKING_TIME",
        ]

        # across the time-of-day change: two periods, split exactly there
        b = bills["tod"]
        cdr = b["cdr"]
        periods = cdr["charging_periods"]
        assert len(periods) == 2, cdr
        assert periods[1]["start_date_time"] == datetime.fromtimestamp(change, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        e1, e2 = (Decimal(str(p["dimensions"][0]["volume"])) for p in periods)
        assert e1 > 0 and e2 > 0 and e1 + e2 == Decimal(36)
        assert abs(b["cost"] - cents(e1 * 1 + e2 * 3)) <= 0.01

        # billed once, and the same everywhere
        sessions = {k: v["session_id"] for k, v in bills.items()}
        for car in cars:
            assert [p for p in car.pushes if p["type"] == "custo_final"] == []
        for target in (str(sqlite_db), pg_url):

            def recorded(target: str = target) -> bool:
                with open_ledger(target, create=False) as led:
                    return len(led.bills()) == 3

            wait_for(recorded, timeout=15, what=f"three bills in {target[:12]}")
            with open_ledger(target, create=False) as led:
                rows = {r.session_id: r for r in led.bills()}
            assert set(rows) == set(sessions.values())
            for name, sid in sessions.items():
                assert rows[sid].cost == Decimal(str(bills[name]["cost"]))
                assert rows[sid].cdr is not None
                assert json.loads(rows[sid].cdr) == bills[name]["cdr"]
        for name, car in zip(("minute", "idle", "tod"), cars, strict=True):
            statement = car.ask("custos")["data"]
            (line,) = statement["sessoes"]
            assert line["cost"] == bills[name]["cost"]
            assert line["cdr"]["total_cost"] == bills[name]["cdr"]["total_cost"]
        report = cli("billing", "report", "--db", str(sqlite_db), "--format", "ocpi")
        assert report.returncode == 0, report.stderr
        cdrs = {c["id"]: c for c in json.loads(report.stdout)}
        assert cdrs == {sid: bills[name]["cdr"] for name, sid in sessions.items()}
        reconcile = cli(
            "billing", "reconcile", "--broker", "127.0.0.1", "--history-port",
            str(ports.history), "--ledger", pg_url, "--format", "json", *ports.cred_args(),
        )  # fmt: skip
        assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr


def test_bad_tariff_files(broker: tuple[Proc, BrokerPorts], tmp_path: Path) -> None:
    _, ports = broker
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {"id": "b", "currency": "BRL", "elements": [
                {"price_components": [{"type": "ENERGY", "price": -1, "step_size": 1}]}]}
        )
    )  # fmt: skip
    out = tariffs(ports, "set", str(bad))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "price" in out.stderr, out.stderr
    listed = tariffs(ports, "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["tariffs"] == []
    gap = tmp_path / "gap.json"
    gap.write_text(
        json.dumps(
            {"id": "eve", "currency": "BRL", "elements": [
                {"price_components": [{"type": "ENERGY", "price": 3, "step_size": 1}],
                 "restrictions": {"start_time": "18:00", "end_time": "21:00"}}]}
        )
    )  # fmt: skip
    out = tariffs(ports, "set", str(gap))
    assert out.returncode == 0, out.stderr
    assert "warning: tariff eve: ENERGY has no price at some moments" in out.stderr
    assert tariffs(ports, "assign", "nope", "--points", "*").returncode == 1
    out = tariffs(ports, "list")
    assert out.returncode == 0 and out.stdout.startswith("eve  BRL")


def test_tariffs_on_a_stopped_broker(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    good = tmp_path / "t.json"
    good.write_text(
        json.dumps({"id": "flat", "currency": "BRL", "elements": [
            {"price_components": [{"type": "ENERGY", "price": 1.5, "step_size": 1}]}]})
    )  # fmt: skip
    assert cli("tariffs", "set", str(good), "--db", str(db)).returncode == 0
    assert cli("tariffs", "assign", "flat", "--points", "CP*", "--db", str(db)).returncode == 0
    out = cli("tariffs", "list", "--db", str(db), "--json")
    assert json.loads(out.stdout)["assignments"] == [{"points": "CP*", "tariff_id": "flat"}]
    # the broker reads them back (and holds the store's lock: a second writer is refused)
    with start_serve(db) as proc:
        del proc
        refused = cli("tariffs", "remove", "flat", "--db", str(db))
        assert refused.returncode == 2 and "in use" in refused.stderr


class start_serve:
    """``ev-broker serve --insecure`` on free ports over ``db`` (a context manager)."""

    def __init__(self, db: Path) -> None:
        from tests.support.procs import broker_ports

        self.ports = broker_ports()
        self.db = db

    def __enter__(self) -> Proc:
        self.proc = start(
            ["python", "-m", "broker", "serve", *self.ports.cli_args(), "--db", str(self.db),
             "--insecure"]
        )  # fmt: skip
        try:
            self.proc.read_until("ev-broker ready:", timeout=20)
        except BaseException:
            self.proc.stop()
            raise
        return self.proc

    def __exit__(self, *exc: Any) -> None:
        self.proc.stop()
