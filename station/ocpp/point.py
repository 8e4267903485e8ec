"""One OCPP charger seen as an ordinary hosted station.

:class:`OcppPoint` offers what :class:`station.host.Host` drives in a simulated
:class:`station.sim.Charger` (``hello``, ``datagram``, ``handle``, ``advance``,
``pending``, ``due_completions``...), so the host's ZeroMQ link, heartbeats,
resends, reconnects, signing and datagram schedule serve OCPP chargers unchanged.
The difference: a broker command is not answered by a model but by the charger,
so :meth:`handle` usually returns no ``ack`` at once; it starts an OCPP call and
the ``ack`` is delivered later through :meth:`GatewayServices.emit`.

The charger side arrives through the ``on_*`` methods, called by the WebSocket
handlers of :mod:`station.ocpp.gateway` with already validated OCPP payloads.
Every mapping rule is a function of :mod:`station.ocpp.mapping`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

from common.messages import Hold, Limit, Release, SessionAck, Start, Stop
from common.timeutil import format_timestamp, parse_timestamp
from station.ocpp import mapping, profiles
from station.ocpp.chargers_file import ChargerSpec
from station.ocpp.logs import warn
from station.sim import (
    RESEND_S,
    State,
    Step,
    ack_message,
    datagram_fields,
    due_resends,
    hello_message,
)

log = logging.getLogger("station.ocpp")

RESERVE_WAIT_S: Final = 4.0  # ReserveNow unanswered this long: point_unavailable
START_WAIT_S: Final = 60.0  # after RemoteStart Accepted: how long StartTransaction may take
LATE_START_KEEP_S: Final = 120.0  # a start we gave up on is still matched this long


class GatewayServices(Protocol):
    """What a point needs from the gateway around it."""

    def call(self, point: OcppPoint, payload: Any, timeout: float | None = None) -> Awaitable[Any]:
        """Send an OCPP call to the point's charger; the result, or None on error/timeout
        (``timeout``: sooner than the connection's own call timeout)."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...

    def emit(self, point: OcppPoint, step: Step) -> None:
        """Carry out a step later than ``handle`` (acks, completions, state changes)."""
        ...

    def new_id(self) -> int: ...

    def save_transaction(self, tx: Transaction | None, tx_id: int | str, point_id: str) -> None: ...

    def save_completion(
        self, session_id: str, msg: dict[str, Any] | None, point_id: str
    ) -> None: ...

    def persist(self, then: Callable[[], None] | None = None) -> None:
        """Write the state soon; call ``then`` once it is durable."""
        ...

    def came_online(self, point: OcppPoint) -> None: ...


@dataclass
class Transaction:
    """An OCPP transaction that is one broker session."""

    transaction_id: int | str  # 1.6: ours (an integer); 2.0.1: the charger's (a string)
    session_id: str
    vehicle_id: str
    nivel_bateria: float
    nivel_carregar: float
    capacidade_kwh: float
    meter_start: int
    started_at: float
    meter_last: int
    soc: float | None = None
    stop_sent: bool = False
    seq: int = -1  # 2.0.1: the last TransactionEvent seqNo applied
    power_kw: float | None = None  # the last Power.Active.Import reported (sites)

    @property
    def energy_wh(self) -> int:
        # meter_start -1: no reading yet (a 2.0.1 Started event without meter values)
        return max(0, self.meter_last - self.meter_start) if self.meter_start >= 0 else 0

    @property
    def target_wh(self) -> int:
        return mapping.target_wh(self.nivel_bateria, self.nivel_carregar, self.capacidade_kwh)


class OcppPoint:
    def __init__(self, spec: ChargerSpec, gw: GatewayServices) -> None:
        self.spec = spec
        self.point_id = spec.id
        self.latitude = spec.latitude
        self.longitude = spec.longitude
        self.power_kw = spec.power_kw
        self.price_kwh = spec.price_kwh
        self.gw = gw
        self.conn: Any = None  # the WebSocket handler of the connected charger
        self.spoke = False  # the charger said something on this connection
        self.heard_at = 0.0
        self.booted = False
        self.connector_status = "Unavailable"
        self.charger_status: str | None = None
        self.hold: Hold | None = None
        self.hold_ocpp_id: int | None = None
        # the ReserveNow being asked: ((reservation_id, until), repeats of that hold)
        self._holding: tuple[tuple[str, float], list[str]] | None = None
        self.session: Transaction | None = None
        self.starting: tuple[Start, float] | None = None
        self.late_start: tuple[Start, float] | None = None
        self.walk_in: Transaction | None = None  # a local start waiting for the broker's start
        self.pending: dict[str, dict[str, Any]] = {}
        self._resend_at: dict[str, float] = {}
        self._acks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._in_flight: set[str] = set()
        self.refused = 0
        self.operative = True  # what the gateway last asked of the connector
        #: the broker's last limit for the running session (kW; None: unlimited), the
        #: input of every protocol version's charging profile (see station.ocpp.profiles)
        self.limit_kw: float | None = None
        self.profiles_rejected = False

    @property
    def takes_limits(self) -> bool:
        """Says ``"limites"`` in its hello: until the charger rejected a profile."""
        return not self.profiles_rejected

    @property
    def dialect(self) -> Any:
        """The mapping module of the connected charger's OCPP version (the calls to it)."""
        conn = self.conn
        return conn.dialect if conn is not None else mapping

    # --- what the host reads ----------------------------------------------------------

    @property
    def online(self) -> bool:
        """Connected and heard on this connection: only then does the broker hear of it."""
        return self.conn is not None and self.spoke

    @property
    def state(self) -> State:
        if self.session is not None:
            return State.CARREGANDO
        estado, _ = mapping.station_state(self.connector_status, self.charger_status)
        if estado == "indisponivel":
            return State.INDISPONIVEL
        return State.RESERVADO if self.hold is not None else State.DISPONIVEL

    def hello(self, boot_id: str, interval_s: float) -> dict[str, Any]:
        # a charger may refuse ReserveNow: the broker waits for our ack of ``hold``
        # ... and out of service from the console becomes ChangeAvailability Inoperative
        hello = hello_message(self, boot_id, interval_s)
        return {**hello, "confirms_holds": True, "availability": True}

    def datagram(self, boot_id: str, seq: int, interval_s: float, now: float) -> dict[str, Any]:
        estado, available = mapping.station_state(self.connector_status, self.charger_status)
        tx = self.session
        if tx is not None:
            estado, available = "carregando", False
        elif self.hold is not None:
            available = False
        d = datagram_fields(
            self, estado, available, self.hold is not None, (boot_id, seq, interval_s, now)
        )
        d["conector_livre"] = tx is None and mapping.connector_free(self.connector_status)
        if tx is not None:
            d["vehicle_id"] = tx.vehicle_id
            d["session_id"] = tx.session_id
            d["energia_kwh"] = min(tx.energy_wh / 1000.0, tx.capacidade_kwh)
            if tx.power_kw is not None:
                d["potencia_atual_kw"] = round(min(tx.power_kw, 1000.0), 3)
            d["battery"] = (
                tx.soc
                if tx.soc is not None
                else mapping.final_level(tx.nivel_bateria, tx.energy_wh, tx.capacidade_kwh)
            )
        return d

    def advance(self, now: float) -> Step:
        if self.late_start is not None and now - self.late_start[1] > LATE_START_KEEP_S:
            self.late_start = None
        return Step()

    def due_completions(self, now: float) -> list[dict[str, Any]]:
        return due_resends(self.pending, self._resend_at, now)

    def restore_completion(self, msg: dict[str, Any], now: float) -> None:
        self.pending[msg["session_id"]] = msg
        self._resend_at[msg["session_id"]] = now

    def refuse(self, cmd_id: str, error: str) -> dict[str, Any]:
        self.refused += 1
        return self._ack(cmd_id, error)

    # --- commands from the broker -----------------------------------------------------

    def handle(self, cmd: Hold | Release | Start | Limit | Stop | SessionAck, now: float) -> Step:
        if isinstance(cmd, SessionAck):
            if self.pending.pop(cmd.session_id, None) is not None:
                self._resend_at.pop(cmd.session_id, None)
                self.gw.save_completion(cmd.session_id, None, self.point_id)
            return Step()
        cached = self._acks.get(cmd.cmd_id)
        if cached is not None:
            return Step(messages=[cached])
        if cmd.cmd_id in self._in_flight:
            return Step()  # a repeat while the charger is still being asked
        if isinstance(cmd, Release):
            return self._release(cmd)
        if not self.online:
            return self._refused(cmd.cmd_id, "point_offline: the charger is not connected")
        match cmd:
            case Hold():
                return self._hold(cmd)
            case Start():
                self.limit_kw = cmd.kw
                return self._start(cmd, now)
            case Limit():
                return self._limit(cmd)
            case Stop():
                return self._stop(cmd)
        return Step()  # pragma: no cover - the match is exhaustive

    def _hold(self, cmd: Hold) -> Step:
        if self.session is not None:
            return self._refused(cmd.cmd_id, f"point_busy: session {self.session.session_id}")
        held = self.hold
        if held is not None and (held.reservation_id, held.until) == (
            cmd.reservation_id,
            cmd.until,
        ):
            # the broker says hold again (a hello of ours crossed its turn): already held
            return Step(messages=[self._ack(cmd.cmd_id, None)])
        asking = self._holding
        if asking is not None and asking[0] == (cmd.reservation_id, cmd.until):
            asking[1].append(cmd.cmd_id)  # answered with the ReserveNow already asked
            self._in_flight.add(cmd.cmd_id)
            return Step()
        ocpp_id = self.hold_ocpp_id if self.hold is not None else None
        ocpp_id = ocpp_id if ocpp_id is not None else self.gw.new_id()
        self._holding = ((cmd.reservation_id, cmd.until), [])
        payload = self.dialect.reserve_now(
            self.spec.connector,
            format_timestamp(cmd.until),
            mapping.id_tag_for(cmd.vehicle_id),
            ocpp_id,
        )
        self._ask(cmd.cmd_id, self._reserve(cmd, payload, ocpp_id))
        return Step()

    async def _reserve(self, cmd: Hold, payload: Any, ocpp_id: int) -> None:
        # answered within the broker's ack timeout (5 s): a late refusal would come
        # after the broker took the hold as given
        result = await self.gw.call(self, payload, RESERVE_WAIT_S)
        status = getattr(result, "status", None)
        asking, self._holding = self._holding, None
        repeats = asking[1] if asking is not None else []
        error = mapping.reserve_refusal(status)
        if error is None:
            self.hold, self.hold_ocpp_id = cmd, ocpp_id
        for cmd_id in [cmd.cmd_id, *repeats]:
            self._answer(cmd_id, error, changed=error is None)

    def _release(self, cmd: Release) -> Step:
        if self.hold is None or self.hold.reservation_id != cmd.reservation_id:
            return self._refused(
                cmd.cmd_id, f"not_held: reservation {cmd.reservation_id} is not held here"
            )
        ocpp_id = self.hold_ocpp_id
        self.hold = self.hold_ocpp_id = None
        if not self.online or ocpp_id is None:
            return Step(messages=[self._ack(cmd.cmd_id, None)], changed=True)
        self._ask(cmd.cmd_id, self._cancel(cmd, ocpp_id))
        return Step(changed=True)

    async def _cancel(self, cmd: Release, ocpp_id: int) -> None:
        await self.gw.call(self, self.dialect.cancel_reservation(ocpp_id))
        # Accepted, or Rejected (the charger no longer has it): released either way
        self._answer(cmd.cmd_id, None)

    def expect_walk_in(self, tx: Transaction | None) -> None:
        self.walk_in = tx

    def _start(self, cmd: Start, now: float) -> Step:
        walk_in = self.walk_in
        if walk_in is not None and walk_in.vehicle_id == cmd.vehicle_id and self.session is None:
            # the charger already runs this transaction: the broker's start names its session
            self.walk_in = None
            walk_in.session_id = cmd.session_id
            walk_in.nivel_bateria, walk_in.nivel_carregar = cmd.nivel_bateria, cmd.nivel_carregar
            walk_in.capacidade_kwh = cmd.capacidade_kwh
            self.begin(walk_in)
            self._in_flight.add(cmd.cmd_id)
            self.gw.persist(lambda: self._answer(cmd.cmd_id, None, changed=True))
            return Step()
        if self.session is not None:
            return self._refused(cmd.cmd_id, f"point_busy: session {self.session.session_id}")
        if self.starting is not None:
            return self._refused(cmd.cmd_id, "point_busy: another start is in progress")
        if cmd.session_id in self.pending:
            return self._refused(cmd.cmd_id, f"session_ended: session {cmd.session_id} ended")
        if not (0.0 <= cmd.nivel_bateria < cmd.nivel_carregar <= 100.0):
            return self._refused(cmd.cmd_id, "invalid: need 0 <= nivel_bateria < nivel_carregar")
        if not (0.0 < cmd.capacidade_kwh <= 1000.0):
            return self._refused(cmd.cmd_id, "invalid: capacidade_kwh must be in (0, 1000]")
        self.starting = (cmd, now)
        self._ask(cmd.cmd_id, self._remote_start(cmd))
        return Step()

    async def _remote_start(self, cmd: Start) -> None:
        tag = mapping.id_tag_for(cmd.vehicle_id)
        payload = self.dialect.remote_start(tag, self.spec.connector, self.gw.new_id())
        result = await self.gw.call(self, payload)
        status = getattr(result, "status", None)
        if status != "Accepted":
            if self.starting is not None and self.starting[0] is cmd:
                self.starting = None
                self._answer(
                    cmd.cmd_id, f"point_unreachable: RemoteStartTransaction answered {status}"
                )
            return
        deadline = time.monotonic() + START_WAIT_S
        while self.starting is not None and self.starting[0] is cmd:
            if time.monotonic() > deadline or not self.online:
                self.starting = None
                self.late_start = (cmd, time.time())
                self._answer(cmd.cmd_id, "point_unreachable: no StartTransaction from the charger")
                return
            await asyncio.sleep(0.05)

    def _stop(self, cmd: Stop) -> Step:
        tx = self.session
        if tx is not None and tx.session_id == cmd.session_id:
            self._ask(cmd.cmd_id, self._remote_stop(cmd, tx))
            return Step()
        if cmd.session_id in self.pending:
            return Step(messages=[self._ack(cmd.cmd_id, None)])
        return self._refused(cmd.cmd_id, f"unknown_session: no session {cmd.session_id} here")

    async def _remote_stop(self, cmd: Stop, tx: Transaction) -> None:
        tx.stop_sent = True
        result = await self.gw.call(self, self.dialect.remote_stop(tx.transaction_id))
        status = getattr(result, "status", None)
        if status == "Accepted" or self.session is not tx:
            self._answer(cmd.cmd_id, None)
        else:
            tx.stop_sent = False
            self._answer(cmd.cmd_id, f"point_unreachable: RemoteStopTransaction answered {status}")

    def availability(self, available: bool, reason: str) -> None:
        """The operator took the point out of service (or put it back): the connector
        becomes Inoperative (Operative). Sent again on every hello while out of service."""
        if self.online and available != self.operative:
            self.operative = available
            self.gw.spawn(self._change_availability(available, reason))

    async def _change_availability(self, available: bool, reason: str) -> None:
        kind = "Operative" if available else "Inoperative"
        payload = self.dialect.change_availability(self.spec.connector, available)
        status = getattr(await self.gw.call(self, payload), "status", None)
        if status not in ("Accepted", "Scheduled"):
            self.operative = not available  # try again on the next notice
            warn(self.point_id, "availability", "%s: ChangeAvailability %s (%s) answered %s",
                 self.point_id, kind, reason, status)  # fmt: skip

    def _limit(self, cmd: Limit) -> Step:
        tx = self.session
        if tx is None or tx.session_id != cmd.session_id:
            if cmd.session_id in self.pending:
                return Step(messages=[self._ack(cmd.cmd_id, None)])  # ended: draws nothing
            return self._refused(cmd.cmd_id, f"unknown_session: no session {cmd.session_id} here")
        self.limit_kw = cmd.kw
        self._ask(cmd.cmd_id, self._set_profile(cmd.cmd_id, tx))
        return Step()

    def _power_limit(self, tx: Transaction) -> profiles.PowerLimit | None:
        if self.limit_kw is None:
            return None
        watts = profiles.limit_watts(self.limit_kw)
        tx_id = tx.transaction_id if isinstance(tx.transaction_id, int) else 0  # 2.0.1: below
        return profiles.PowerLimit(tx.session_id, tx_id, self.spec.connector, watts)

    async def _set_profile(self, cmd_id: str | None, tx: Transaction) -> None:
        """Tell the charger the limit of ``tx``; ack ``cmd_id`` with its answer."""
        limit = self._power_limit(tx)
        if limit is None:
            return
        if self.dialect is mapping:
            payload: Any = profiles.set_profile_16(limit)
        else:  # the same limit as 2.0.1's TxProfile of the charger's (string) transaction id
            payload = profiles.set_profile_201(limit, str(tx.transaction_id))
        result = await self.gw.call(self, payload)
        error = profiles.refusal(getattr(result, "status", None))
        if error is not None and result is not None:
            self.profiles_rejected = True
        if cmd_id is not None:
            self._answer(cmd_id, error)
        elif error is not None:
            log.warning("%s: %s", self.point_id, error)

    # --- acks -------------------------------------------------------------------------

    def _ask(self, cmd_id: str, coro: Coroutine[Any, Any, None]) -> None:
        self._in_flight.add(cmd_id)
        self.gw.spawn(coro)

    def _answer(self, cmd_id: str, error: str | None, changed: bool = False) -> None:
        self._in_flight.discard(cmd_id)
        if error is not None:
            self.refused += 1
            warn(self.point_id, "refused", "%s: refused %s: %s", self.point_id, cmd_id, error)
        self.gw.emit(self, Step(messages=[self._ack(cmd_id, error)], changed=changed))

    def _refused(self, cmd_id: str, error: str) -> Step:
        # the host logs the refusal it sends
        return Step(messages=[self.refuse(cmd_id, error)])

    def _ack(self, cmd_id: str, error: str | None) -> dict[str, Any]:
        return ack_message(self._acks, cmd_id, error)

    # --- the charger ------------------------------------------------------------------

    def connected(self, conn: Any) -> None:
        self.conn, self.spoke = conn, False

    def disconnected(self, conn: Any) -> None:
        if self.conn is conn:
            self.conn, self.spoke = None, False
            log.info("%s: charger disconnected", self.point_id)

    def heard(self, now: float) -> None:
        """Any message from the charger is a sign of life."""
        self.heard_at = now
        if not self.spoke and self.conn is not None:
            self.spoke = True
            self.gw.came_online(self)

    def on_boot(self) -> None:
        """A charger that boots has forgotten its reservations: the broker's ``hold``,
        resent on our next hello, makes a new ReserveNow."""
        self.booted = True
        self.hold = self.hold_ocpp_id = None

    def on_status(self, connector_id: int, status: str) -> None:
        before = self.state, mapping.station_state(self.connector_status, self.charger_status)
        if connector_id == 0:
            self.charger_status = status
        elif connector_id == self.spec.connector:
            self.connector_status = status
        else:
            return
        if status == "Available" and self.hold is not None and self.session is None:
            pass  # an expired or cancelled reservation on the charger: the broker owns the queue
        after = self.state, mapping.station_state(self.connector_status, self.charger_status)
        if after != before:
            self.gw.emit(self, Step(changed=True))

    def on_meter_values(self, transaction_id: int | str | None, meter_value: Any) -> None:
        tx = self.session
        if tx is None or (transaction_id is not None and transaction_id != tx.transaction_id):
            return
        self.on_reading(tx, *self.dialect.meter_reading(meter_value))
        power = profiles.power_reading(meter_value) if self.dialect is mapping else None
        if power is not None:
            tx.power_kw = power
        self.check_target(tx)

    def on_reading(self, tx: Transaction, wh: int | None, soc: float | None) -> None:
        """A meter reading of the running transaction ``tx``."""
        if wh is not None and tx.meter_start < 0:
            tx.meter_start = wh  # the transaction's first reading is its start
        if wh is not None and wh >= tx.meter_start:
            tx.meter_last = wh
        if soc is not None:
            tx.soc = soc

    def check_target(self, tx: Transaction) -> None:
        if tx.energy_wh >= tx.target_wh and not tx.stop_sent and self.online:
            # the vehicle's target is reached: end the session, as our own stations do
            tx.stop_sent = True
            self.gw.spawn(self._stop_at_target(tx))

    async def _stop_at_target(self, tx: Transaction) -> None:
        result = await self.gw.call(self, self.dialect.remote_stop(tx.transaction_id))
        if getattr(result, "status", None) != "Accepted" and self.session is tx:
            tx.stop_sent = False

    def on_start_transaction(
        self,
        id_tag: str,
        meter_start: int,
        timestamp: str,
        now: float,
        transaction_id: int | str | None = None,
    ) -> int | str | None:
        """A transaction started on the charger; its transactionId (``transaction_id`` when
        the charger chose it, 2.0.1), or None when it is not one the broker asked for (the
        caller then treats it as a walk-in). ``meter_start`` -1: not read yet."""
        match = self._starting_for(id_tag)
        if match is None:
            return None
        cmd, late = match
        tx_id = transaction_id if transaction_id is not None else self.gw.new_id()
        self.begin(
            Transaction(
                transaction_id=tx_id,
                session_id=cmd.session_id,
                vehicle_id=cmd.vehicle_id,
                nivel_bateria=cmd.nivel_bateria,
                nivel_carregar=cmd.nivel_carregar,
                capacidade_kwh=cmd.capacidade_kwh,
                meter_start=meter_start,
                started_at=epoch_or(timestamp, now),
                meter_last=meter_start,
            )
        )
        # acked once the transaction is in the state file (it must survive a crash)
        self.gw.persist(lambda: self._answer(cmd.cmd_id, None, changed=True))
        if late:
            log.warning("%s: late StartTransaction for %s", self.point_id, cmd.session_id)
        return tx_id

    def _starting_for(self, id_tag: str) -> tuple[Start, bool] | None:
        for slot, late in ((self.starting, False), (self.late_start, True)):
            if slot is not None and mapping.id_tag_for(slot[0].vehicle_id) == id_tag:
                if late:
                    self.late_start = None
                else:
                    self.starting = None
                return slot[0], late
        return None

    def begin(self, tx: Transaction) -> None:
        self.session = tx
        self.hold = self.hold_ocpp_id = None
        self.gw.save_transaction(tx, tx.transaction_id, self.point_id)
        if self.limit_kw is not None and self.online:
            # the start carried the session's first limit on a site
            self.gw.spawn(self._set_profile(None, tx))

    def on_stop_transaction(
        self,
        transaction_id: int | str,
        meter_stop: int | None,
        timestamp: str,
        reason: str | None,
        now: float,
    ) -> bool:
        """The charger ended a transaction; False when it is not one of ours.
        ``meter_stop`` None: the last reading is the end (2.0.1 without meter values)."""
        tx = self.session
        if tx is None or tx.transaction_id != transaction_id:
            return False
        if meter_stop is not None:
            self.on_reading(tx, meter_stop, None)
        energy_wh = min(tx.energy_wh, round(tx.capacidade_kwh * 1000))
        kwh = energy_wh / 1000.0
        msg: dict[str, Any] = {
            "type": "session_complete",
            "session_id": tx.session_id,
            "vehicle_id": tx.vehicle_id,
            "energia_kwh": kwh,
            "energia_medida_kwh": kwh,
            "nivel_inicial": tx.nivel_bateria,
            "nivel_final": mapping.final_level(tx.nivel_bateria, energy_wh, tx.capacidade_kwh),
            "started_at": format_timestamp(tx.started_at),
            "ended_at": format_timestamp(epoch_or(timestamp, now)),
            "reason": mapping.stop_reason(reason, energy_wh, tx.target_wh),
        }
        self.session = None
        self.pending[tx.session_id] = msg
        self._resend_at[tx.session_id] = now + RESEND_S
        self.gw.save_completion(tx.session_id, msg, self.point_id)
        self.gw.save_transaction(None, tx.transaction_id, self.point_id)
        log.info(
            "%s: session %s complete (%s), %.3f kWh metered",
            self.point_id, tx.session_id, msg["reason"], kwh,
        )  # fmt: skip
        self.gw.emit(self, Step(messages=[msg], changed=True))
        return True


def transaction_record(tx: Transaction, point_id: str) -> dict[str, Any]:
    return {"point_id": point_id, **asdict(tx)}


def transaction_from_record(rec: dict[str, Any]) -> Transaction:
    fields = {k: v for k, v in rec.items() if k != "point_id"}
    return Transaction(**fields)


def epoch_or(timestamp: str, fallback: float) -> float:
    try:
        return parse_timestamp(timestamp)
    except (ValueError, OverflowError):
        return fallback
