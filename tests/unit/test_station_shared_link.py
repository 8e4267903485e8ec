"""The station host on ONE shared connection (the OCPP gateway's SharedLink): every
message names its point, one heartbeat per period for the connection, the broker's
messages reach the point they name."""

from __future__ import annotations

from typing import Any

from common.codec import pack, unpack
from station.host import Host, HostConfig
from station.sim import Charger


class MemoryLink:
    """A shared link in memory: what the host sent, what the broker says next."""

    shared = True

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.inbox: list[tuple[str, bytes]] = []

    def send(self, point_id: str, frame: bytes) -> bool:
        self.sent.append(unpack(frame))
        return True

    def receive(self, limit: int) -> list[tuple[str, bytes]]:
        out, self.inbox = self.inbox[:limit], self.inbox[limit:]
        return out

    def reset(self) -> None: ...

    @property
    def opened(self) -> int:
        return 2

    def pump(self, budget: int) -> bool:
        return False

    def close(self) -> None: ...


def test_every_message_names_its_point_and_the_connection_has_one_heartbeat() -> None:
    link = MemoryLink()
    chargers = [Charger("SH01", -12.0, -38.0), Charger("SH02", -12.1, -38.1)]
    host = Host(chargers, HostConfig(status_port=9, heartbeat_s=1.0), lambda _ids: link)
    host.start(100.0)
    hellos = [m for m in link.sent if m["type"] == "hello"]
    assert sorted(m["id"] for m in hellos) == ["SH01", "SH02"]
    link.inbox = [
        (p, pack({"type": "welcome", "heartbeat_s": 1.0, "id": p})) for p in ("SH01", "SH02")
    ]
    link.sent.clear()
    for t in range(1, 6):  # five seconds of turns
        host.turn(100.0 + t)
    beats = [m for m in link.sent if m["type"] == "heartbeat"]
    assert 4 <= len(beats) <= 6 and all(m["id"] in ("SH01", "SH02") for m in beats)
    # a command for SH02 reaches SH02, its ack names SH02; the connection's own
    # heartbeat (no id) is heard, not dropped as a frame for an unknown station
    hold = {"type": "hold", "cmd_id": "c1", "reservation_id": "r1", "vehicle_id": "V",
            "until": 1e10, "id": "SH02"}  # fmt: skip
    link.inbox = [("SH02", pack(hold)), ("", pack({"type": "heartbeat"}))]
    link.sent.clear()
    host.turn(106.0)
    (ack,) = [m for m in link.sent if m["type"] == "ack"]
    assert ack == {"type": "ack", "cmd_id": "c1", "ok": True, "id": "SH02"}
    assert chargers[1].hold is not None and chargers[0].hold is None
    assert host.counters.frames_in >= 4
    host.close()


class PerPointLink(MemoryLink):
    """A link with a connection per point (``ev-station fleet``)."""

    shared = False


def test_a_completion_resent_without_an_answer_makes_its_station_say_hello_again() -> None:
    # a broker that restarted routes nothing to a connection that has not greeted it and
    # refuses its completion; the station must not stay unheard by it for ever even when
    # the link stays busy (here: heartbeats keep coming for both points)
    link = PerPointLink()
    chargers = [Charger("PP01", -12.0, -38.0), Charger("PP02", -12.1, -38.1)]
    host = Host(chargers, HostConfig(status_port=9, heartbeat_s=1.0), lambda _ids: link)
    host.start(100.0)
    link.inbox = [(p, pack({"type": "welcome", "heartbeat_s": 1.0})) for p in ("PP01", "PP02")]
    start = {"type": "start", "cmd_id": "c1", "session_id": "S1", "vehicle_id": "V",
             "nivel_bateria": 20, "nivel_carregar": 21, "capacidade_kwh": 1}  # fmt: skip
    host.turn(100.5)
    link.inbox = [("PP02", pack(start))]
    link.sent.clear()
    t = 101.0
    try:
        while t < 130.0:
            link.inbox += [(p, pack({"type": "heartbeat"})) for p in ("PP01", "PP02")]
            host.turn(t)
            t += 0.25
    finally:
        host.close()
    done = [m for m in link.sent if m["type"] == "session_complete"]
    hellos = [m for m in link.sent if m["type"] == "hello" and m.get("id", "PP02") == "PP02"]
    assert len(done) >= 5  # resent every 2 s, never answered
    assert hellos, "the station never said hello again"
    assert all(m["type"] != "hello" or m.get("id") != "PP01" for m in link.sent)
