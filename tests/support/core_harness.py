"""A fake-clock harness that drives :class:`broker.core.Core` (no sockets).

Every effect list goes through :meth:`Harness.apply`, which checks that bus
seqs are gap-free and that every event decodes into its topic's struct, and
keeps an in-memory copy of the persisted records, so any test can rebuild a
core from "the store" with :meth:`Harness.restored`.
"""

from __future__ import annotations

import itertools
from typing import Any, TypeVar

import msgspec

from broker.core import Core, CoreConfig
from broker.core.effects import Effect, Persist, Publish, Push, Reply, SendStation
from common.events import event_data, event_fields
from common.messages import (
    REQUEST_TYPES,
    Ack,
    BusEvent,
    Heartbeat,
    Hello,
    Hold,
    SessionComplete,
    Start,
    StatusDatagram,
    VehicleRequest,
)

T0 = 1_700_000_000.0
M = TypeVar("M")


class Harness:
    """One core, a fake clock, an in-memory store and every event published."""

    def __init__(self, now: float = T0, **config: Any) -> None:
        self.counter = itertools.count(1)
        self.config = CoreConfig(**config)
        self.core = Core(self.config, self.new_id)
        self.now = now
        self.events: list[BusEvent] = []
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.seqs: dict[str, int] = {}
        self.apply(self.core.start(now))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.counter)}"

    # --- effects --------------------------------------------------------------------

    def apply(self, fx: list[Effect]) -> list[Effect]:
        for e in fx:
            if isinstance(e, Publish):
                expected = self.events[-1].seq + 1 if self.events else e.event.seq
                assert e.event.seq == expected, (e.event.seq, expected)
                typed = event_data(e.event)  # every event decodes into its topic's struct
                assert typed is not None and event_fields(typed) == e.event.data, e.event
                self.events.append(e.event)
            elif isinstance(e, Persist):
                if e.value is None:
                    self.store.pop((e.table, e.key), None)
                else:
                    self.store[(e.table, e.key)] = e.value
        return fx

    @staticmethod
    def replies(fx: list[Effect]) -> list[Reply]:
        """The replies, their data as a vehicle reads it (the wire JSON, decoded)."""
        return [
            Reply(e.conn, e.request_id, e.type, wire(e.data), e.truncated)
            for e in fx
            if isinstance(e, Reply)
        ]

    @staticmethod
    def reply(fx: list[Effect]) -> Reply:
        rs = Harness.replies(fx)
        assert len(rs) == 1, fx
        return rs[0]

    @staticmethod
    def pushes(fx: list[Effect], kind: str | None = None) -> list[Push]:
        """The pushes (of type ``kind`` only, when given), their data as the wire JSON."""
        return [
            Push(e.vehicle_id, e.type, wire(e.data))
            for e in fx
            if isinstance(e, Push) and (kind is None or e.type == kind)
        ]

    @staticmethod
    def topics(fx: list[Effect]) -> list[str]:
        return [e.event.topic for e in fx if isinstance(e, Publish)]

    @staticmethod
    def published(fx: list[Effect], topic: str) -> list[dict[str, Any]]:
        return [e.event.data for e in fx if isinstance(e, Publish) and e.event.topic == topic]

    @staticmethod
    def commands(fx: list[Effect], kind: type[M] | None = None) -> list[M]:
        """The station messages of ``fx`` (of struct ``kind`` only, when given)."""
        return [
            # (ignored below) the expression is evaluated for its error only
            e.message  # type: ignore[misc]
            for e in fx
            if isinstance(e, SendStation) and (kind is None or isinstance(e.message, kind))
        ]

    # --- inputs ---------------------------------------------------------------------

    def at(self, dt: float) -> float:
        self.now += dt
        return self.now

    def tick(self, dt: float = 0.0) -> list[Effect]:
        self.now += dt
        return self.apply(self.core.tick(self.now))

    def dgram(
        self,
        pid: str,
        lat: float = -12.26,
        lon: float = -38.96,
        signed_ts: float | None = None,
        **kw: Any,
    ) -> list[Effect]:
        """A datagram from our station model (boot ``boot-<pid>``, auto seq).

        ``signed_ts``: the ``ts`` of a datagram whose signature the edge checked.
        """
        if "seq" not in kw:
            self.seqs[pid] = self.seqs.get(pid, 0) + 1
            kw["seq"] = self.seqs[pid]
        kw.setdefault("boot_id", f"boot-{pid}")
        d = StatusDatagram(id=pid, latitude=lat, longitude=lon, **kw)
        return self.apply(self.core.handle_datagram(d, self.now, signed_ts))

    def point(self, pid: str = "CP01", **kw: Any) -> list[Effect]:
        """Register ``pid`` (online, free) by a datagram."""
        kw.setdefault("estado", "disponivel")
        return self.dgram(pid, **kw)

    def request(
        self, vid: str, rtype: str, conn: int = 1, rid: Any = None, **data: Any
    ) -> list[Effect]:
        struct = msgspec.convert(data, REQUEST_TYPES[rtype])
        req = VehicleRequest(rtype, struct) if rid is None else VehicleRequest(rtype, struct, rid)
        return self.apply(self.core.handle_request(conn, vid, req, self.now))

    def reserve(self, vid: str, pid: str = "CP01", eta: float = 0.0) -> dict[str, Any]:
        """``reserva``; a hold it causes is acked, as our stations do."""
        fx = self.request(vid, "reserva", id_ponto_recarga=pid, tempo_estimado=eta)
        if not self.replies(fx):
            for hold in self.commands(fx, Hold):
                fx += self.ack(pid, hold.cmd_id)
        return dict(self.reply(fx).data)

    def arrive(
        self, vid: str, pid: str = "CP01", battery: float = 20, target: float = 80, **kw: Any
    ) -> list[Effect]:
        kw.setdefault("metodo_pagamento", "Pix")
        return self.request(
            vid,
            "chegada",
            id_ponto_recarga=pid,
            nivel_bateria=battery,
            nivel_carregar=target,
            **kw,
        )

    def station(self, pid: str, msg: Any) -> list[Effect]:
        return self.apply(self.core.handle_station(pid, msg, self.now))

    def hello(self, pid: str, boot: str = "hb", **kw: Any) -> list[Effect]:
        kw.setdefault("latitude", -12.26)
        kw.setdefault("longitude", -38.96)
        return self.station(pid, Hello(id=pid, boot_id=boot, **kw))

    def heartbeat(self, pid: str) -> list[Effect]:
        return self.station(pid, Heartbeat())

    def ack(self, pid: str, cmd_id: str, ok: bool = True, error: str | None = None) -> list[Effect]:
        return self.station(pid, Ack(cmd_id=cmd_id, ok=ok, error=error))

    def complete(
        self,
        pid: str,
        session_id: str,
        vid: str,
        start: float = 20,
        end: float = 80,
        energy: float = 36.0,
        reason: str = "target_reached",
    ) -> list[Effect]:
        msg = SessionComplete(
            session_id=session_id,
            vehicle_id=vid,
            energia_kwh=energy,
            nivel_inicial=start,
            nivel_final=end,
            started_at=0.0,
            ended_at=1.0,
            # (ignored below) a free-text reason on purpose (out-of-contract input)
            reason=reason,  # type: ignore[arg-type]
        )
        return self.station(pid, msg)

    def start_charging(
        self, vid: str, pid: str = "CP01", battery: float = 20, target: float = 80, **kw: Any
    ) -> str:
        """Arrive and ack the start; returns the session id."""
        fx = self.arrive(vid, pid, battery, target, **kw)
        (start,) = self.commands(fx, Start)
        reply = self.reply(self.ack(pid, start.cmd_id))
        assert reply.data["code"] == "started", reply
        return str(start.session_id)

    def restored(self, dt: float = 0.0) -> Core:
        """A new core rebuilt from the persisted records, ``dt`` seconds later."""
        core = Core(self.config, self.new_id)
        records = [(t, k, v) for (t, k), v in self.store.items()]
        core.restore(records, self.events[-1].seq, self.now + dt)
        return core


def wire(data: Any) -> Any:
    """A reply or push payload as a vehicle reads it: encoded as the broker does, decoded."""
    return msgspec.json.decode(data if isinstance(data, msgspec.Raw) else msgspec.json.encode(data))


def comparable(snap: dict[str, Any]) -> dict[str, Any]:
    """The snapshot minus liveness (restored points are offline until heard)."""
    points = [
        {
            k: v
            for k, v in p.items()
            if k not in ("estado", "available", "espera_estimada_min", "last_heard", "online")
        }
        for p in snap["points"]
    ]
    return {"points": points, "queues": snap["queues"], "sessions": snap["sessions"]}
