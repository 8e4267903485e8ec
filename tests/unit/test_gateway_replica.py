"""The gateway's replica answers queries as the core does (broker/gateway/replica.py).

A core is driven through the harness; a replica is fed its snapshot at one
point and every event after it; the encoded ``bateria``/``consulta`` answers of
both, through the one read path, must be the same bytes.
"""

from __future__ import annotations

import msgspec

from broker.core.read_path import bateria_points, consulta_points
from broker.gateway.replica import Replica
from common.messages import Bateria, Consulta
from tests.support.core_harness import Harness

WHERE = {"latitude": -12.26, "longitude": -38.96}


def _answers(reads: object, now: float) -> tuple[bytes, bytes]:
    bat = msgspec.convert({"nivel_bateria": 50, "localizacao": WHERE, "limite": 10}, Bateria)
    con = msgspec.convert({"localizacao": WHERE}, Consulta)
    return (
        # (ignored below) the encoded points are a Raw (bytes-like) here
        bytes(bateria_points(reads, bat, now)),  # type: ignore[arg-type]
        # (ignored below) the encoded points are a Raw (bytes-like) here
        bytes(consulta_points(reads, con, now)[0]),  # type: ignore[arg-type]
    )


def _replica_of(h: Harness, since: int = 0) -> Replica:
    replica = Replica(h.config.queue_capacity)
    if since == 0:
        replica.on_snapshot({"seq": 0, "points": [], "queues": {}, "sessions": []})
    else:
        replica.on_snapshot(h.core.snapshot(h.now))
    replica.on_batch([e for e in h.events if e.seq > replica.applied_seq], h.core.last_seq)
    return replica


def _scene(h: Harness) -> None:
    for i in range(6):
        h.point(f"CP0{i}", lat=-12.26 + i * 0.01, potencia_kw=22 + i)
    h.reserve("A", "CP01", eta=5)
    h.reserve("B", "CP01", eta=10)
    h.reserve("C", "CP02")
    h.point("CP03", lat=-12.23, estado="indisponivel")
    h.apply(h.core.set_availability("CP04", False, "maintenance", "op", h.now)[1])


def test_replica_from_events_answers_as_the_core() -> None:
    h = Harness()
    _scene(h)
    replica = _replica_of(h)
    assert replica.applied_seq == h.core.last_seq
    assert _answers(replica.reads, h.now) == _answers(h.core._eng.points.reads, h.now)


def test_replica_from_a_snapshot_then_events_answers_as_the_core() -> None:
    h = Harness()
    h.point("CP09")
    h.reserve("Z", "CP09", eta=3)
    h.at(30)
    replica = Replica(h.config.queue_capacity)
    replica.on_snapshot(h.core.snapshot(h.now))
    before = replica.applied_seq
    _scene(h)
    h.request("Z", "cancelar", id_ponto_recarga="CP09")
    replica.on_batch([e for e in h.events if e.seq > before], h.core.last_seq)
    assert _answers(replica.reads, h.now + 60) == _answers(h.core._eng.points.reads, h.now + 60)


def test_a_session_leaves_the_queue_and_its_end_frees_the_point() -> None:
    h = Harness()
    h.point("CP01")
    h.reserve("A", "CP01")
    session = h.start_charging("A", "CP01")
    replica = _replica_of(h)
    p = replica.reads.points["CP01"]
    assert p.queue == [] and p.session is not None and p.session.id == session
    h.complete("CP01", session, "A")
    h.point("CP01")
    replica.on_batch([e for e in h.events if e.seq > replica.applied_seq], h.core.last_seq)
    assert replica.reads.points["CP01"].session is None
    assert _answers(replica.reads, h.now) == _answers(h.core._eng.points.reads, h.now)


def test_malformed_events_are_counted_and_skipped() -> None:
    h = Harness()
    h.point("CP01")
    replica = _replica_of(h)
    bad = msgspec.structs.replace(h.events[-1], topic="point.status", data={"point_id": "CP01"})
    replica.on_batch([bad], bad.seq)
    assert replica.malformed == 1 and replica.applied_seq == bad.seq


def test_waiters_hear_every_applied_seq() -> None:
    h = Harness()
    h.point("CP01")
    replica = Replica()
    heard: list[int] = []
    replica.on_applied(heard.append)
    replica.on_snapshot(h.core.snapshot(h.now))
    h.reserve("A", "CP01")
    replica.on_batch([e for e in h.events if e.seq > replica.applied_seq], h.core.last_seq)
    assert heard == [heard[0], h.core.last_seq] and heard[0] < h.core.last_seq


def test_a_session_on_a_site_waits_at_its_allocated_power_in_the_replica_too() -> None:
    from common.messages import Hello

    h = Harness()
    for pid in ("SX1", "SX2"):
        h.station(pid, Hello(id=pid, latitude=-12.26, longitude=-38.96, potencia_kw=22.0,
                             boot_id="b", limites=True))  # fmt: skip
        h.point(pid, potencia_kw=22.0, boot_id="b")
    reply, fx = h.core.set_site("lot", 8, ["SX*"], None, "op", h.now)
    h.apply(fx)
    assert reply["ok"]
    before = h.core.last_seq
    snap = h.core.snapshot(h.now)
    h.start_charging("V1", "SX1")
    h.start_charging("V2", "SX2")  # both at 4.2 kW: the waits are long
    from_events = _replica_of(h)
    assert _answers(from_events.reads, h.now) == _answers(h.core._eng.points.reads, h.now)
    from_snapshot = Replica(h.config.queue_capacity)
    from_snapshot.on_snapshot(h.core.snapshot(h.now))
    assert _answers(from_snapshot.reads, h.now) == _answers(h.core._eng.points.reads, h.now)
    assert snap["seq"] == before


TOU = {
    "id": "tou",
    "currency": "BRL",
    "elements": [
        {"price_components": [{"type": "FLAT", "price": 1.50, "vat": 12, "step_size": 1}]},
        {
            "price_components": [{"type": "ENERGY", "price": 2.60, "vat": 12, "step_size": 1}],
            "restrictions": {"start_time": "18:00", "end_time": "21:00"},
        },
        {
            "price_components": [
                {"type": "ENERGY", "price": 1.80, "vat": 12, "step_size": 1},
                {"type": "PARKING_TIME", "price": 12.00, "vat": 12, "step_size": 60},
            ]
        },
    ],
}


def _estimates(reads: object, now: float) -> tuple[bytes, bytes]:
    """``bateria``/``consulta`` with ``custo_estimado`` (and ``tarifa`` on every point)."""
    where = {"localizacao": WHERE, "capacidade_kwh": 60, "nivel_carregar": 90}
    bat = msgspec.convert({"nivel_bateria": 20, "limite": 10, **where}, Bateria)
    con = msgspec.convert({"nivel_bateria": 20, "ordenar": "custo", **where}, Consulta)
    return (
        # (ignored below) the encoded points are a Raw (bytes-like) here
        bytes(bateria_points(reads, bat, now)),  # type: ignore[arg-type]
        # (ignored below) the encoded points are a Raw (bytes-like) here
        bytes(consulta_points(reads, con, now)[0]),  # type: ignore[arg-type]
    )


def _tariffs(h: Harness, action: str, **kw: object) -> None:
    import json

    body = json.dumps(kw.pop("tariff")) if "tariff" in kw else None
    reply, fx = h.core.tariffs(action, body, kw.get("tariff_id"), kw.get("points"), "op", h.now)
    assert reply.get("ok") is True, reply
    h.apply(fx)


def test_a_tariffed_point_reads_the_same_through_a_replica() -> None:
    """Tariffs and assignments from the snapshot (read in the core's zone) and from
    ``tariff.updated`` events: ``tarifa`` and ``custo_estimado`` are the core's bytes."""
    from zoneinfo import ZoneInfo

    h = Harness(tz=ZoneInfo("America/Bahia"))
    _scene(h)
    _tariffs(h, "set", tariff=TOU)
    _tariffs(h, "assign", tariff_id="tou", points="CP0[0-2]")
    replica = Replica(h.config.queue_capacity)
    replica.on_snapshot(h.core.snapshot(h.now))
    assert replica.reads.tariffs is not None and replica.malformed == 0
    core_reads = h.core._eng.points.reads
    for later in (0, 6 * 3600, 9 * 3600):  # across the 18:00-21:00 boundaries
        assert _estimates(replica.reads, h.now + later) == _estimates(core_reads, h.now + later)
    assert b'"tarifa"' in _estimates(core_reads, h.now)[0]
    before = replica.applied_seq
    cheaper = {**TOU, "id": "night", "elements": TOU["elements"][2:]}
    _tariffs(h, "set", tariff=cheaper)
    _tariffs(h, "assign", tariff_id="night", points="CP03")
    _tariffs(h, "assign", tariff_id="tou", points="CP05")
    _tariffs(h, "remove", tariff_id="tou")
    _tariffs(h, "set", tariff={**TOU, "id": "tou2"})
    _tariffs(h, "assign", tariff_id="tou2", points="CP0*")
    replica.on_batch([e for e in h.events if e.seq > before], h.core.last_seq)
    assert replica.malformed == 0
    for later in (0, 6 * 3600, 9 * 3600):
        assert _estimates(replica.reads, h.now + later) == _estimates(core_reads, h.now + later)
        assert _answers(replica.reads, h.now + later) == _answers(core_reads, h.now + later)
