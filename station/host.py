"""The asyncio edge that drives one or many :class:`station.sim.Charger` models.

One loop, one UDP socket for every station, one :class:`station.links.Link` for
ZeroMQ. Every ``tick_s`` the host: reads broker frames and hands them to the
models; lets simulated time run; sends the status datagrams that are due (each
station once per ``interval_s``, phases spread evenly, plus one at once on every
state change); sends heartbeats to stations that sent nothing to the broker for
``heartbeat_s``; resends unacknowledged ``session_complete``; re-creates the
ZeroMQ socket(s) when the broker has been silent for ``silence_s``.

Schedules are heaps of (due time, station index), so the cost per tick is the
work that is due, not the number of stations.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from common import runner
from common.codec import decode_broker_message, encode_datagram, pack
from common.credentials import Credential, sign_datagram
from common.errors import BadBrokerFrame, StationProtocolError
from common.messages import (
    Availability,
    Heartbeat,
    Hold,
    Limit,
    Release,
    SessionAck,
    Start,
    Stop,
    Welcome,
)
from common.ports import STATION_PORT, STATUS_PORT
from station.links import Link
from station.sim import Charger, Step

log = logging.getLogger("station")

RECEIVE_BATCH: Final = 5000
HELLO_RETRY_S: Final = 1.0  # a hello that could not be sent (not connected yet) is retried
CONNECT_WINDOW: Final = 2000  # fleet: connections opened but not yet welcomed, at most ...
CONNECT_MIN: Final = 20  # ... but at least this many more are opened per tick (no welcome?)
HELLO_BATCH: Final = 2000  # hellos attempted per housekeeping pass (keeps loop turns short)
HOUSEKEEPING_S: Final = 0.25
#: a completion resent this long without an answer makes its station say hello again:
#: a broker that restarted routes nothing to a connection that has not greeted it, and
#: in a fleet the other stations keep the link busy, so it never falls silent
UNANSWERED_HELLO_S: Final = 6.0


@dataclass
class HostConfig:
    broker: str = "127.0.0.1"
    status_port: int = STATUS_PORT
    station_port: int = STATION_PORT
    interval_s: float = 2.0
    heartbeat_s: float = 1.0
    silence_s: float = 5.0
    tick_s: float = 0.02
    report_s: float = 0.0  # 0: no periodic figures
    fault_after_s: float | None = None
    fault_for_s: float | None = None  # None: the fault stays
    mute_commands: bool = False
    #: Signs every status datagram (``EVS1``) when set; the links use its CURVE keys.
    credential: Credential | None = None
    #: No datagram for a station not yet welcomed (the OCPP gateway: the broker must
    #: know from the hello that the point confirms holds before a driver can reserve it)
    quiet_until_welcome: bool = False


@dataclass
class Counters:
    datagrams: int = 0
    datagrams_dropped: int = 0
    frames_out: int = 0
    frames_out_dropped: int = 0
    frames_in: int = 0
    bad_frames: int = 0
    muted: int = 0
    resets: int = 0


class Host:
    """Runs ``chargers`` against one broker until :meth:`request_stop`."""

    def __init__(
        self,
        chargers: list[Charger],
        config: HostConfig,
        link_factory: Callable[[list[str]], Link],
        out: Callable[[str], None] = print,
        boot_id: str | None = None,
        seq_start: int = 0,
    ) -> None:
        if not chargers:
            raise ValueError("at least one station is needed")
        self.chargers = chargers
        self.config = config
        # a host whose stations outlive it (the OCPP gateway) keeps its boot id across
        # restarts and starts ``seq`` above anything sent before (see docs/ocpp.md)
        self.boot_id = boot_id or uuid.uuid4().hex
        self.counters = Counters()
        self._out = out
        self._link_factory = link_factory
        self._link: Link | None = None
        self._index = {c.point_id: i for i, c in enumerate(chargers)}
        n = len(chargers)
        self._seq = [seq_start] * n
        self._last_heard = [0.0] * n
        self._last_sent = [0.0] * n
        # stations still waiting for ``welcome``: when their hello may be sent (again)
        self._hello_due: dict[int, float] = {}
        self._active: set[int] = set()  # stations with a session or a hold
        self._pending: set[int] = set()  # stations with unacknowledged completions
        self._unanswered_since: dict[int, float] = {}  # ... resent since, unanswered
        self._dg_heap: list[tuple[float, int]] = []
        self._hb_heap: list[tuple[float, int]] = []
        self._link_heard = 0.0
        self._addr: Any = None
        self._udp: socket.socket | None = None
        self._stopping = False
        self._shared = False
        self._next_link_hb = 0.0
        self._started = 0.0
        self._faulted = False
        self._recovered = False
        self._next_housekeeping = 0.0
        self._next_scan = 0.0
        self._next_report = 0.0
        self._report_base = (0.0, 0)

    # --- lifecycle --------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        """Start, print the ready line, and serve until :meth:`request_stop`."""
        self.start(time.time())
        try:
            while not self._stopping:
                self.turn(time.time())
                await asyncio.sleep(self.config.tick_s)
        finally:
            self.close()

    def start(self, now: float) -> None:
        cfg = self.config
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setblocking(False)
        self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self._resolve()
        self._link = self._link_factory([c.point_id for c in self.chargers])
        # one connection for all points: every message names its point (SharedLink)
        self._shared = bool(getattr(self._link, "shared", False))
        self._link.pump(CONNECT_WINDOW)
        self._started = self._link_heard = now
        n = len(self.chargers)
        for i in range(n):
            self._last_heard[i] = now
            self._dg_heap.append((now + cfg.interval_s * i / n, i))
            self._hb_heap.append((now + cfg.heartbeat_s * (1.0 + i / n), i))
            self._hello_due[i] = now
        heapq.heapify(self._dg_heap)
        heapq.heapify(self._hb_heap)
        self._send_hellos(now)
        self._next_report = now + cfg.report_s
        self._report_base = (now, 0)
        endpoint = f"tcp://{cfg.broker}:{cfg.station_port}"
        if n == 1:
            c = self.chargers[0]
            self._out(
                f"station {c.point_id} ready: udp {cfg.broker}:{cfg.status_port}, "
                f"zmq {endpoint}, boot {self.boot_id}"
            )
        else:
            self._out(
                f"fleet ready: {n} stations, udp {cfg.broker}:{cfg.status_port}, "
                f"zmq {endpoint}, interval {cfg.interval_s:g} s, boot {self.boot_id}"
            )

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def _resolve(self) -> None:
        try:
            infos = socket.getaddrinfo(
                self.config.broker, self.config.status_port, socket.AF_INET, socket.SOCK_DGRAM
            )
            self._addr = infos[0][4]
        except OSError as exc:
            if self._addr is None:
                log.warning("cannot resolve %s yet (%s); will retry", self.config.broker, exc)

    def deliver(self, point_id: str, step: Step, now: float) -> None:
        """Carry out a step that a station produced outside :meth:`turn` (the OCPP gateway:
        an ``ack`` once the charger has answered, a completion, a state change)."""
        i = self._index.get(point_id)
        if i is not None and self._link is not None:
            self._apply(i, step, now)

    def rehello(self, point_id: str, now: float) -> None:
        """Say ``hello`` for this station again now (it came back online).

        At once rather than at the next housekeeping: the broker routes a point's
        commands only to a connection that said hello for it, and the datagram saying
        the point is free goes out at once too.
        """
        i = self._index.get(point_id)
        if i is not None:
            self._hello_due[i] = now
            self._last_heard[i] = now
            if self._link is not None and self.chargers[i].online:
                sent = self._send(
                    i, self.chargers[i].hello(self.boot_id, self.config.interval_s), now
                )
                self._hello_due[i] = now + (self.config.silence_s if sent else HELLO_RETRY_S)

    # --- one turn of the loop ---------------------------------------------------------

    def turn(self, now: float) -> None:
        """Everything that is due at ``now`` (called every tick)."""
        link = self._link
        assert link is not None
        in_flight = link.opened - (len(self.chargers) - len(self._hello_due))
        if link.pump(max(CONNECT_MIN, CONNECT_WINDOW - in_flight)):
            self._link_heard = now  # still opening connections: silence is not counted yet
        self._receive(now)
        self._faults(now)
        for i in list(self._active):
            self._apply(i, self.chargers[i].advance(now), now)
        self._datagrams(now)
        self._heartbeats(now)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_S
            self._housekeeping(now)
        if self.config.report_s > 0 and now >= self._next_report:
            self._report(now)

    def _receive(self, now: float) -> None:
        assert self._link is not None
        for point_id, frame in self._link.receive(RECEIVE_BATCH):
            i = self._index.get(point_id)
            if i is None and self._shared and not point_id:
                self.counters.frames_in += 1  # the broker's heartbeat of the shared connection
                self._link_heard = now
                continue
            if i is None:
                log.warning("frame for unknown station %r dropped", point_id)
                continue
            self.counters.frames_in += 1
            self._last_heard[i] = now
            self._link_heard = now
            self._on_frame(i, frame, now)

    def _on_frame(self, i: int, frame: bytes, now: float) -> None:
        c = self.chargers[i]
        try:
            msg = decode_broker_message(frame)
        except BadBrokerFrame as exc:
            self.counters.bad_frames += 1
            log.warning("%s: %s", c.point_id, exc.message)
            if exc.cmd_id is not None and not self.config.mute_commands:
                self._send(i, c.refuse(exc.cmd_id, exc.message), now)
            return
        match msg:
            case Welcome():
                if self._hello_due.pop(i, None) is not None and len(self.chargers) == 1:
                    log.info("%s: welcomed by the broker", c.point_id)
            case Heartbeat():
                pass
            case Availability():
                notice = getattr(c, "availability", None)  # stations that asked for it
                if notice is not None:
                    notice(msg.available, msg.reason)
            case SessionAck():
                if msg.session_id in c.pending:
                    log.info(
                        "%s: session %s acknowledged by the broker", c.point_id, msg.session_id
                    )
                c.handle(msg, now)
                if not c.pending:
                    self._pending.discard(i)
                    self._unanswered_since.pop(i, None)
            case Hold() | Release() | Start() | Limit() | Stop():
                if self.config.mute_commands:
                    self.counters.muted += 1
                    log.info(
                        "%s: muted, %s %s not answered",
                        c.point_id,
                        msg.__struct_config__.tag,
                        msg.cmd_id,
                    )
                    return
                step = c.handle(msg, now)
                for m in step.messages:
                    if m["type"] == "ack" and not m["ok"]:
                        log.warning("%s: refused %s: %s", c.point_id, msg.cmd_id, m["error"])
                self._apply(i, step, now)

    def _apply(self, i: int, step: Step, now: float) -> None:
        c = self.chargers[i]
        for m in step.messages:
            if m["type"] == "session_complete":
                log.info(
                    "%s: session %s complete (%s), %.3f kWh",
                    c.point_id, m["session_id"], m["reason"], m["energia_kwh"],
                )  # fmt: skip
            self._send(i, m, now)
        if step.changed:
            log.info("%s: state %s", c.point_id, c.state.value)
            self._send_datagram(i, now)
        if c.session is not None or c.hold is not None or getattr(c, "plugged_until", None):
            self._active.add(i)
        else:
            self._active.discard(i)
        if c.pending:
            self._pending.add(i)

    def _faults(self, now: float) -> None:
        cfg = self.config
        if cfg.fault_after_s is None:
            return
        if not self._faulted and now >= self._started + cfg.fault_after_s:
            self._faulted = True
            log.warning("fault injected: stations go indisponivel")
            for i, c in enumerate(self.chargers):
                self._apply(i, c.fault(now), now)
        if (
            self._faulted
            and not self._recovered
            and cfg.fault_for_s is not None
            and now >= self._started + cfg.fault_after_s + cfg.fault_for_s
        ):
            self._recovered = True
            log.warning("fault cleared: stations are disponivel again")
            for i, c in enumerate(self.chargers):
                self._apply(i, c.recover(now), now)

    def _datagrams(self, now: float) -> None:
        heap = self._dg_heap
        interval = self.config.interval_s
        while heap and heap[0][0] <= now:
            due, i = heap[0]
            nxt = due + interval
            if nxt <= now:  # fell behind by a whole interval: do not try to catch up
                nxt = now + interval
            heapq.heapreplace(heap, (nxt, i))
            self._send_datagram(i, now)

    def _heartbeats(self, now: float) -> None:
        if self._shared:
            self._link_heartbeat(now)
            return
        heap = self._hb_heap
        hb = self.config.heartbeat_s
        frame = pack(Heartbeat())
        while heap and heap[0][0] <= now:
            _, i = heap[0]
            if i in self._hello_due or not self.chargers[i].online:
                # not welcomed yet, or an absent OCPP charger: look again in a period (not
                # every tick: thousands of absent chargers would saturate the loop)
                heapq.heapreplace(heap, (now + hb, i))
                continue
            last = self._last_sent[i]
            if now - last >= hb * 0.999:
                self._send_raw(i, frame, now)
                last = now
            heapq.heapreplace(heap, (max(last + hb, now + 0.01), i))

    def _link_heartbeat(self, now: float) -> None:
        """A shared connection: one heartbeat per period for the connection (naming one
        welcomed point, as a message on it must), not one per point; the broker hears
        each point through its datagrams."""
        if now < self._next_link_hb:
            return
        self._next_link_hb = now + self.config.heartbeat_s
        for i, c in enumerate(self.chargers):
            if c.online and i not in self._hello_due:
                self._send(i, {"type": "heartbeat"}, now)
                return

    def _housekeeping(self, now: float) -> None:
        for i in list(self._pending):
            due = self.chargers[i].due_completions(now)
            for m in due:
                self._send(i, m, now)
            if due:
                since = self._unanswered_since.setdefault(i, now)
                if now - since >= UNANSWERED_HELLO_S and i not in self._hello_due:
                    self._hello_due[i] = now
                    self._unanswered_since[i] = now
        silence = self.config.silence_s
        if now - self._link_heard > silence and any(c.online for c in self.chargers):
            log.warning("broker silent for %.0f s: re-creating the ZeroMQ socket", silence)
            assert self._link is not None
            self._link.reset()
            self.counters.resets += 1
            self._link_heard = now
            self._resolve()
            for i in range(len(self.chargers)):
                self._last_heard[i] = now
                self._hello_due[i] = now
        elif now >= self._next_scan and not self._shared:  # one station unheard: hello again
            self._next_scan = now + 1.0
            for i, heard in enumerate(self._last_heard):
                if now - heard > silence and i not in self._hello_due:
                    self._hello_due[i] = now
                    self._last_heard[i] = now
        self._send_hellos(now)

    def _send_hellos(self, now: float) -> None:
        cfg = self.config
        budget = HELLO_BATCH
        for i, due in list(self._hello_due.items()):
            if due <= now and budget > 0 and self.chargers[i].online:
                budget -= 1
                sent = self._send(i, self.chargers[i].hello(self.boot_id, cfg.interval_s), now)
                # sent: wait for ``welcome``, hello again after silence_s; not sent: retry soon
                self._hello_due[i] = now + (cfg.silence_s if sent else HELLO_RETRY_S)

    # --- output -----------------------------------------------------------------------

    def _send(self, i: int, message: dict[str, Any], now: float) -> bool:
        if self._shared:
            message = {**message, "id": self.chargers[i].point_id}
        return self._send_raw(i, pack(message), now)

    def _send_raw(self, i: int, frame: bytes, now: float) -> bool:
        assert self._link is not None
        if self._link.send(self.chargers[i].point_id, frame):
            self._last_sent[i] = now
            self.counters.frames_out += 1
            return True
        self.counters.frames_out_dropped += 1
        return False

    def _send_datagram(self, i: int, now: float) -> None:
        if not self.chargers[i].online:  # an OCPP charger that is not connected: silence
            return
        if self.config.quiet_until_welcome and i in self._hello_due:
            return
        if self._addr is None or self._udp is None:
            self._resolve()
            if self._addr is None or self._udp is None:
                self.counters.datagrams_dropped += 1
                return
        seq = self._seq[i] + 1
        self._seq[i] = seq
        try:
            data = encode_datagram(
                self.chargers[i].datagram(self.boot_id, seq, self.config.interval_s, now)
            )
            if self.config.credential is not None:
                data = sign_datagram(self.config.credential, data)
            self._udp.sendto(data, self._addr)
        except (OSError, StationProtocolError) as exc:
            self.counters.datagrams_dropped += 1
            log.debug("datagram of %s not sent: %s", self.chargers[i].point_id, exc)
            return
        self.counters.datagrams += 1

    def _report(self, now: float) -> None:
        t0, d0 = self._report_base
        rate = (self.counters.datagrams - d0) / max(1e-9, now - t0)
        self._report_base = (now, self.counters.datagrams)
        self._next_report = now + self.config.report_s
        charging = sum(1 for i in self._active if self.chargers[i].session is not None)
        welcomed = len(self.chargers) - len(self._hello_due)
        self._out(
            f"fleet: {len(self.chargers)} stations, {rate:.0f} datagrams/s, "
            f"{welcomed} welcomed, {charging} charging, zmq out {self.counters.frames_out} "
            f"in {self.counters.frames_in} dropped {self.counters.frames_out_dropped}"
        )


def run_host(host: Host) -> None:
    """Run ``host`` on uvloop when available; SIGINT/SIGTERM stop it cleanly."""
    runner.run(lambda _stop: host.run(), on_stop=host.request_stop)
