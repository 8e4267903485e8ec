"""`ev-station` as a real process against a broker double (real ROUTER + real UDP socket)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.station_double import BrokerDouble
from tests.support.procs import running

pytestmark = pytest.mark.e2e

START = {
    "type": "start",
    "cmd_id": "c1",
    "session_id": "S1",
    "vehicle_id": "CAR1",
    "nivel_bateria": 20.0,
    "nivel_carregar": 80.0,
    "capacidade_kwh": 60.0,
}


@pytest.fixture
def double() -> Iterator[BrokerDouble]:
    d = BrokerDouble()
    try:
        yield d
    finally:
        d.close()


def station(double: BrokerDouble, *extra: str, point: str = "CP01") -> list[str]:
    return [
        "python", "-m", "station", "run", "--id", point, "--lat", "-12.25", "--lon", "-38.95",
        "--interval", "0.3", *double.args(), *extra,
    ]  # fmt: skip


def is_ack(cmd_id: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda _i, m: m.get("type") == "ack" and m.get("cmd_id") == cmd_id


def test_hello_datagrams_and_heartbeats(double: BrokerDouble) -> None:
    with running(station(double, "--power-kw", "22", "--price-kwh", "1.5"), ready="ready"):
        ident, hello = double.recv_type("hello")
        assert ident == "CP01"
        assert hello["id"] == "CP01" and hello["latitude"] == -12.25
        assert hello["potencia_kw"] == 22.0 and hello["preco_kwh"] == 1.5
        assert hello["interval_s"] == 0.3 and len(hello["boot_id"]) >= 16
        first = double.datagram()
        second = double.datagram()
        assert second["seq"] > first["seq"] and second["boot_id"] == hello["boot_id"]
        assert first["estado"] == "disponivel" and first["available"] is True
        assert {"id", "latitude", "longitude", "queue_size", "potencia_kw", "preco_kwh",
                "interval_s", "ts"} <= first.keys()  # fmt: skip
        t0 = time.monotonic()
        double.recv_type("heartbeat", timeout=3.0)
        double.recv_type("heartbeat", timeout=3.0)
        assert time.monotonic() - t0 < 2.6  # about one per second while idle


def test_session_flow_resends_completion_until_acked(double: BrokerDouble) -> None:
    with running(station(double, "--speed", "3600"), ready="ready"):
        double.recv_type("hello")
        double.send("CP01", {**START, "nivel_carregar": 90.0})
        assert double.recv(is_ack("c1"))[1]["ok"] is True
        charging = double.datagram(lambda d: d.get("estado") == "carregando")
        assert charging["session_id"] == "S1" and charging["vehicle_id"] == "CAR1"
        _, done = double.recv_type("session_complete", timeout=5.0)
        assert done["energia_kwh"] == 42.0 and done["reason"] == "target_reached"
        assert done["nivel_inicial"] == 20.0 and done["nivel_final"] == 90.0
        t0 = time.monotonic()
        _, again = double.recv_type("session_complete", timeout=4.0)
        assert again == done and 1.5 < time.monotonic() - t0 < 3.0
        double.send("CP01", {"type": "session_ack", "session_id": "S1"})
        time.sleep(0.2)
        double.frames.clear()
        with pytest.raises(TimeoutError):
            double.recv_type("session_complete", timeout=3.0)
        after = double.datagram(lambda d: d["seq"] > charging["seq"] and "session_id" not in d)
        assert after["estado"] == "disponivel" and after["available"] is True


def test_bad_commands_are_refused_and_the_station_keeps_working(double: BrokerDouble) -> None:
    with running(station(double), ready="ready") as proc:
        double.recv_type("hello")
        double.send("CP01", START)
        assert double.recv(is_ack("c1"))[1]["ok"] is True
        double.send("CP01", {**START, "cmd_id": "c2", "session_id": "S2"})
        busy = double.recv(is_ack("c2"))[1]
        assert busy["ok"] is False and "busy" in busy["error"]
        double.send("CP01", {"type": "stop", "cmd_id": "c3", "session_id": "nope"})
        assert double.recv(is_ack("c3"))[1]["ok"] is False
        double.send("CP01", {"type": "start", "cmd_id": "c4"})  # fields missing
        bad = double.recv(is_ack("c4"))[1]
        assert bad["ok"] is False and "malformed" in bad["error"]
        double.send_raw("CP01", b"\xc1garbage")
        double.send("CP01", {"type": "stop", "cmd_id": "c5", "session_id": "S1"})
        assert double.recv(is_ack("c5"))[1]["ok"] is True
        _, done = double.recv_type("session_complete")
        assert done["reason"] == "stopped" and done["session_id"] == "S1"
        assert proc.popen.poll() is None
        assert "busy" in proc.read_until("refused c2", timeout=2.0)


def test_mute_commands_answers_nothing_but_keeps_reporting(double: BrokerDouble) -> None:
    with running(station(double, "--mute-commands"), ready="ready"):
        double.recv_type("hello")
        double.send("CP01", START)
        with pytest.raises(TimeoutError):
            double.recv(is_ack("c1"), timeout=1.5)
        assert double.datagram()["estado"] == "disponivel"
        double.recv_type("heartbeat")


def test_fault_after_ends_the_session_with_reason_fault(double: BrokerDouble) -> None:
    with running(station(double, "--fault-after", "1.5", "--fault-for", "1"), ready="ready"):
        double.recv_type("hello")
        double.send("CP01", START)
        assert double.recv(is_ack("c1"))[1]["ok"] is True
        _, done = double.recv_type("session_complete", timeout=4.0)
        assert done["reason"] == "fault" and done["energia_kwh"] > 0
        assert double.datagram(lambda d: d["estado"] == "indisponivel")["available"] is False
        double.send("CP01", {**START, "cmd_id": "c2", "session_id": "S2"})
        assert double.recv(is_ack("c2"))[1]["ok"] is False
        assert double.datagram(lambda d: d["estado"] == "disponivel", timeout=3.0)


@pytest.mark.slow
def test_silence_recreates_the_socket_and_a_completion_survives_a_broker_outage(
    double: BrokerDouble,
) -> None:
    silence = ("--broker-silence", "1.5")
    with running(station(double, "--speed", "3600", *silence), ready="ready") as proc:
        _, hello1 = double.recv_type("hello")
        double.send("CP01", START)  # 36 kWh at 50 kW: 0.72 h simulated, 0.72 s real
        assert double.recv(is_ack("c1"))[1]["ok"] is True
        double.close_router()  # the broker dies; the session completes meanwhile
        assert "broker silent" in proc.read_until("re-creating", timeout=10.0)
        double.bind_router()  # back on the same port
        _, hello2 = double.recv_type("hello", timeout=8.0)
        assert hello2["boot_id"] == hello1["boot_id"]
        _, done = double.recv_type("session_complete", timeout=4.0)
        assert done["session_id"] == "S1" and done["reason"] == "target_reached"
        assert done["energia_kwh"] == 36.0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly_within_2_s(double: BrokerDouble, sig: int) -> None:
    with running(station(double), ready="ready") as proc:
        double.recv_type("hello")
        t0 = time.monotonic()
        proc.signal(sig)
        assert proc.popen.wait(timeout=2.0) == 0
        assert time.monotonic() - t0 < 2.0


def test_options_come_from_the_environment(double: BrokerDouble) -> None:
    env = {
        "EV_ID": "ENV7", "EV_LAT": "1.5", "EV_LON": "2.5", "EV_INTERVAL": "0.3",
        "EV_STATUS_PORT": str(double.status_port), "EV_STATION_PORT": str(double.station_port),
    }  # fmt: skip
    with running(["python", "-m", "station", "run"], ready="ready", env=env):
        ident, hello = double.recv_type("hello")
        assert ident == "ENV7" and hello["latitude"] == 1.5 and hello["longitude"] == 2.5
        assert double.datagram()["id"] == "ENV7"


def test_fleet_routes_each_station_on_its_own_identity(double: BrokerDouble) -> None:
    args = ["python", "-m", "station", "fleet", "--count", "40", "--prefix", "FT", "--seed", "3",
            "--interval", "0.5", "--report-every", "1", *double.args()]  # fmt: skip
    with running(args, ready="fleet ready: 40 stations") as proc:
        seen: set[str] = set()

        def all_hellos(ident: str, msg: dict[str, Any]) -> bool:
            if msg["type"] == "hello":
                seen.add(ident)
            return len(seen) == 40

        double.recv(all_hellos)
        assert seen == {f"FT{n:04d}" for n in range(1, 41)}
        ids = {double.datagram()["id"] for _ in range(120)}
        assert len(ids) == 40
        double.send("FT0007", {**START, "cmd_id": "f7"})
        ident, ack = double.recv(is_ack("f7"))
        assert ident == "FT0007" and ack["ok"] is True
        assert double.datagram(lambda d: d["id"] == "FT0007" and d["estado"] == "carregando")
        line = proc.read_until("datagrams/s", timeout=3.0)
        assert "40 stations" in line
    assert proc.popen.returncode == 0


def test_a_state_change_sends_a_datagram_at_once(double: BrokerDouble) -> None:
    args = station(double)
    args[args.index("--interval") + 1] = "30"  # the periodic datagram is far away
    with running(args, ready="ready"):
        double.recv_type("hello")
        first = double.datagram(timeout=3.0)  # the one sent at start
        t0 = time.monotonic()
        double.send("CP01", START)
        changed = double.datagram(timeout=2.0)
        assert time.monotonic() - t0 < 1.0
        assert changed["estado"] == "carregando" and changed["seq"] == first["seq"] + 1
        double.send("CP01", {"type": "stop", "cmd_id": "c2", "session_id": "S1"})
        after = double.datagram(timeout=2.0)
        assert after["estado"] == "disponivel" and after["seq"] == first["seq"] + 2
