"""The pure charging model of one station: states, sessions, energy, acks.

Theory of operation
-------------------
A :class:`Charger` is a small state machine with no sockets and no clock:

* ``disponivel``   free;
* ``reservado``    free but held for a reservation (``hold`` from the broker);
* ``carregando``   a session runs;
* ``indisponivel`` faulted (fault injection); refuses every command but ``release``.

Every entry point takes ``now`` (wall-clock epoch seconds, supplied by the
caller) and returns a :class:`Step`: the msgpack-ready maps to send to the
broker (``ack``, ``session_complete``) and whether the visible state changed
(the caller then sends a status datagram at once).

Simulated time runs ``speed`` times faster than ``now``. A session charges a
battery of ``capacidade_kwh`` from ``nivel_bateria`` to ``nivel_carregar`` at
``potencia_kw`` up to 80 % state of charge; above 80 % the power falls linearly
to 20 % of rated at 100 % (a constant-current / constant-voltage taper). The
state of charge is computed in closed form from the session's total simulated
time (linear below 80 %, exponential above), so there is no step-size error,
whatever the caller's tick. Energy is kept as integer Wh.

On a site the broker limits what a session may draw (``limit``, energy.md): the
session then charges at ``min(potencia_kw, limit)`` (0: paused). Each limit
change starts a new segment of the same closed form from the state of charge
reached, so the charge curve follows the allowed power; the datagram reports
the power drawn now as ``potencia_atual_kw``.

Completed sessions stay in :attr:`Charger.pending` until the broker answers
``session_ack``; :meth:`Charger.due_completions` returns those to resend.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

from common.messages import Hold, Limit, Release, SessionAck, Start, Stop
from common.timeutil import format_timestamp

TAPER_START_SOC: Final = 80.0
TAPER_FLOOR: Final = 0.2  # fraction of rated power left at 100 % SoC
# Above the taper start: ds/dt = r * (1 - (1 - FLOOR) * (s - 80) / 20) = r * K * (S_INF - s)
_TAPER_K: Final = (1.0 - TAPER_FLOOR) / (100.0 - TAPER_START_SOC)
_S_INF: Final = TAPER_START_SOC + 1.0 / _TAPER_K  # SoC where power would reach zero (105 %)
RESEND_S: Final = 2.0  # session_complete resend period until session_ack
HOLD_GRACE_S: Final = 30.0  # a hold is dropped this long after its ``until`` (lost release)
ACK_CACHE: Final = 64  # recent cmd_ids remembered, so a duplicate gets the same ack


class State(StrEnum):
    DISPONIVEL = "disponivel"
    RESERVADO = "reservado"
    CARREGANDO = "carregando"
    INDISPONIVEL = "indisponivel"


def _rate_pct_per_s(power_kw: float, capacity_kwh: float) -> float:
    """State-of-charge rise in % per simulated second at rated power."""
    return power_kw / capacity_kwh * 100.0 / 3600.0


def power_at(soc: float, power_kw: float) -> float:
    """Power (kW) drawn at state of charge ``soc`` (%) by a charger rated ``power_kw``."""
    if soc <= TAPER_START_SOC:
        return power_kw
    return power_kw * max(0.0, 1.0 - _TAPER_K * (soc - TAPER_START_SOC))


def soc_after(soc0: float, seconds: float, power_kw: float, capacity_kwh: float) -> float:
    """State of charge (%) after charging ``seconds`` simulated seconds from ``soc0``."""
    rate = _rate_pct_per_s(power_kw, capacity_kwh)
    soc = soc0
    left = max(0.0, seconds)
    if soc < TAPER_START_SOC:
        to_taper = (TAPER_START_SOC - soc) / rate
        if left <= to_taper:
            return soc + rate * left
        left -= to_taper
        soc = TAPER_START_SOC
    return _S_INF - (_S_INF - soc) * math.exp(-_TAPER_K * rate * left)


def seconds_to_reach(soc0: float, target: float, power_kw: float, capacity_kwh: float) -> float:
    """Simulated seconds needed to charge from ``soc0`` to ``target`` (both %, target <= 100)."""
    if target <= soc0:
        return 0.0
    rate = _rate_pct_per_s(power_kw, capacity_kwh)
    total = 0.0
    soc = soc0
    if soc < TAPER_START_SOC:
        linear_end = min(target, TAPER_START_SOC)
        total += (linear_end - soc) / rate
        soc = linear_end
    if target > soc:
        total += math.log((_S_INF - soc) / (_S_INF - target)) / (_TAPER_K * rate)
    return total


def energy_wh(soc0: float, soc: float, capacity_kwh: float) -> int:
    """Energy in whole Wh for a rise from ``soc0`` to ``soc`` (%) of ``capacity_kwh``."""
    return round((soc - soc0) * capacity_kwh * 10.0)


@dataclass
class Session:
    """A running charging session."""

    session_id: str
    vehicle_id: str
    soc0: float
    target: float
    capacity_kwh: float
    started_at: float
    duration_s: float  # simulated seconds of the current segment needed to reach the target
    sim_elapsed: float = 0.0  # simulated seconds in the current segment
    soc: float = 0.0
    power_kw: float = 0.0  # what it may draw now: the point's power or the limit, if lower
    seg_soc: float = 0.0  # state of charge when the current segment began

    def drawing_kw(self) -> float:
        """The power drawn now (the taper above 80 % included)."""
        return power_at(self.soc, self.power_kw) if self.power_kw > 0 else 0.0

    def rebase(self, power_kw: float) -> None:
        """From now on charge at ``power_kw``: a new segment from the level reached."""
        self.seg_soc = self.soc
        self.sim_elapsed = 0.0
        self.power_kw = power_kw
        self.duration_s = (
            seconds_to_reach(self.soc, self.target, power_kw, self.capacity_kwh)
            if power_kw > 0
            else math.inf
        )

    @property
    def energy_wh(self) -> int:
        return energy_wh(self.soc0, self.soc, self.capacity_kwh)


@dataclass
class Step:
    """What a model call asks the caller to do."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    changed: bool = False


@dataclass
class Charger:
    """One charging point's physical state (pure: ``now`` is always passed in)."""

    point_id: str
    latitude: float
    longitude: float
    power_kw: float = 50.0
    price_kwh: float = 2.0
    speed: float = 60.0
    dwell_s: float = 0.0  # the vehicle stays plugged this long (real seconds) after charging
    takes_limits: bool = True  # says ``"limites": true`` and obeys ``limit`` (energy.md)
    state: State = State.DISPONIVEL
    hold: Hold | None = None
    session: Session | None = None
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    _resend_at: dict[str, float] = field(default_factory=dict)
    _acks: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    _last_now: float | None = None
    plugged_until: float | None = None
    refused: int = 0

    @property
    def online(self) -> bool:
        """A simulated station is always there (an OCPP charger may not be connected)."""
        return True

    # --- commands from the broker -----------------------------------------------------

    def handle(self, cmd: Hold | Release | Start | Limit | Stop | SessionAck, now: float) -> Step:
        """Apply one broker message; every command gets exactly one ``ack``."""
        if isinstance(cmd, SessionAck):
            self.pending.pop(cmd.session_id, None)
            self._resend_at.pop(cmd.session_id, None)
            return Step()
        cached = self._acks.get(cmd.cmd_id)
        if cached is not None:  # a duplicate command: same answer, no second effect
            return Step(messages=[cached])
        step = self.advance(now)
        match cmd:
            case Hold():
                error = self._hold(cmd)
            case Release():
                error = self._release(cmd)
            case Start():
                error = self._start(cmd, now)
            case Limit():
                error = self._limit(cmd)
            case Stop():
                error = self._stop(cmd, now, step)
        if error is None:
            step.changed = True
        else:
            self.refused += 1
        ack = self._ack(cmd.cmd_id, error)
        step.messages.insert(0, ack)
        return step

    def refuse(self, cmd_id: str, error: str) -> dict[str, Any]:
        """The ``ack ok=false`` for a command that could not even be decoded."""
        self.refused += 1
        return self._ack(cmd_id, error)

    def _ack(self, cmd_id: str, error: str | None) -> dict[str, Any]:
        return ack_message(self._acks, cmd_id, error)

    def _hold(self, cmd: Hold) -> str | None:
        if self.state is State.INDISPONIVEL:
            return "point_unavailable: the charger is faulted"
        if self.state is State.CARREGANDO:
            assert self.session is not None
            return f"point_busy: charging session {self.session.session_id}"
        # The broker owns the queue: a new hold replaces an older one.
        self.hold = cmd
        self.state = State.RESERVADO
        return None

    def _release(self, cmd: Release) -> str | None:
        if self.hold is None or self.hold.reservation_id != cmd.reservation_id:
            return f"not_held: reservation {cmd.reservation_id} is not held here"
        self.hold = None
        if self.state is State.RESERVADO:
            self.state = State.DISPONIVEL
        return None

    def _start(self, cmd: Start, now: float) -> str | None:
        if self.state is State.INDISPONIVEL:
            return "point_unavailable: the charger is faulted"
        if self.session is not None:
            return f"point_busy: charging session {self.session.session_id}"
        if cmd.session_id in self.pending:
            return f"session_ended: session {cmd.session_id} already ended"
        if not (0.0 <= cmd.nivel_bateria < cmd.nivel_carregar <= 100.0):
            return "invalid: need 0 <= nivel_bateria < nivel_carregar <= 100"
        if not (0.0 < cmd.capacidade_kwh <= 1000.0):
            return "invalid: capacidade_kwh must be in (0, 1000]"
        self.hold = None
        self.plugged_until = None
        power = self.power_kw if cmd.kw is None else min(self.power_kw, cmd.kw)
        self.session = Session(
            session_id=cmd.session_id,
            vehicle_id=cmd.vehicle_id,
            soc0=cmd.nivel_bateria,
            target=cmd.nivel_carregar,
            capacity_kwh=cmd.capacidade_kwh,
            started_at=now,
            duration_s=0.0,
            soc=cmd.nivel_bateria,
        )
        self.session.rebase(power)
        self.state = State.CARREGANDO
        return None

    def _limit(self, cmd: Limit) -> str | None:
        s = self.session
        if s is None or s.session_id != cmd.session_id:
            if cmd.session_id in self.pending:
                return None  # it already ended: it draws nothing
            return f"unknown_session: no session {cmd.session_id} here"
        s.rebase(min(self.power_kw, cmd.kw))
        return None

    def _stop(self, cmd: Stop, now: float, step: Step) -> str | None:
        if self.session is not None and self.session.session_id == cmd.session_id:
            step.messages.append(self._finish(now, "stopped"))
            return None
        if cmd.session_id in self.pending:
            return None  # it already ended (target reached or fault): nothing left to stop
        return f"unknown_session: no session {cmd.session_id} here"

    # --- time, faults -----------------------------------------------------------------

    def advance(self, now: float) -> Step:
        """Let simulated time run up to ``now``; a session that reached its target completes."""
        step = Step()
        last = self._last_now
        self._last_now = now if last is None else max(last, now)
        if last is None or now <= last:
            return step
        hold = self.hold
        if hold is not None and self.state is State.RESERVADO and now > hold.until + HOLD_GRACE_S:
            self.hold = None
            self.state = State.DISPONIVEL
            step.changed = True
        if self.plugged_until is not None and now >= self.plugged_until:
            self.plugged_until = None  # the vehicle left: tell the broker at once
            step.changed = True
        s = self.session
        if s is None:
            return step
        sim = s.sim_elapsed + (now - last) * self.speed
        if sim >= s.duration_s:
            # the exact wall-clock moment the target was reached
            ended = now - (sim - s.duration_s) / self.speed
            s.sim_elapsed = s.duration_s
            s.soc = s.target
            step.messages.append(self._finish(ended, "target_reached"))
            step.changed = True
        else:
            s.sim_elapsed = sim
            if s.power_kw > 0:  # paused (limit 0): the level stays
                s.soc = min(s.target, soc_after(s.seg_soc, sim, s.power_kw, s.capacity_kwh))
        return step

    def fault(self, now: float) -> Step:
        """The charger fails: ``indisponivel``; a running session ends with reason ``fault``."""
        step = self.advance(now)
        if self.session is not None:
            step.messages.append(self._finish(now, "fault"))
        self.hold = None
        step.changed = step.changed or self.state is not State.INDISPONIVEL
        self.state = State.INDISPONIVEL
        return step

    def recover(self, now: float) -> Step:
        """The fault is cleared: back to ``disponivel``."""
        step = self.advance(now)
        if self.state is State.INDISPONIVEL:
            self.state = State.DISPONIVEL
            step.changed = True
        return step

    def _finish(self, ended_at: float, reason: str) -> dict[str, Any]:
        s = self.session
        assert s is not None
        self.session = None
        self.state = State.DISPONIVEL
        msg: dict[str, Any] = {
            "type": "session_complete",
            "session_id": s.session_id,
            "vehicle_id": s.vehicle_id,
            "energia_kwh": s.energy_wh / 1000.0,
            "nivel_inicial": s.soc0,
            "nivel_final": round(s.soc, 4),
            "started_at": format_timestamp(s.started_at),
            "ended_at": format_timestamp(ended_at),
            "reason": reason,
        }
        self.pending[s.session_id] = msg
        self._resend_at[s.session_id] = ended_at + RESEND_S
        if self.dwell_s > 0:
            self.plugged_until = ended_at + self.dwell_s
        return msg

    def due_completions(self, now: float) -> list[dict[str, Any]]:
        """Unacknowledged ``session_complete`` messages whose resend time has come."""
        return due_resends(self.pending, self._resend_at, now)

    # --- what the station tells the world ---------------------------------------------

    def hello(self, boot_id: str, interval_s: float) -> dict[str, Any]:
        return hello_message(self, boot_id, interval_s)

    def datagram(self, boot_id: str, seq: int, interval_s: float, now: float) -> dict[str, Any]:
        """The status datagram (original minimal fields + our extended ones).

        ``estado`` on the wire is ``disponivel`` | ``carregando`` | ``indisponivel``: a held
        (reserved) charger reports ``disponivel`` with ``available`` false and ``queue_size`` 1.
        """
        s = self.session
        wire_state = State.DISPONIVEL if self.state is State.RESERVADO else self.state
        d = datagram_fields(
            self,
            wire_state.value,
            self.state is State.DISPONIVEL,
            self.hold is not None,
            (boot_id, seq, interval_s, now),
        )
        d["conector_livre"] = s is None and self.plugged_until is None
        if s is not None:
            d["vehicle_id"] = s.vehicle_id
            d["battery"] = round(s.soc, 2)
            d["session_id"] = s.session_id
            d["energia_kwh"] = s.energy_wh / 1000.0
            d["potencia_atual_kw"] = round(min(self.power_kw, s.drawing_kw()), 3)
        return d


# --- shared with other hosted stations (the OCPP gateway's points) ----------------------


class Placed(Protocol):
    point_id: str
    latitude: float
    longitude: float
    power_kw: float
    price_kwh: float

    @property
    def takes_limits(self) -> bool: ...


def hello_message(station: Placed, boot_id: str, interval_s: float) -> dict[str, Any]:
    """The ``hello`` a station says to the broker."""
    return {
        "type": "hello",
        "id": station.point_id,
        "latitude": station.latitude,
        "longitude": station.longitude,
        "potencia_kw": station.power_kw,
        "preco_kwh": station.price_kwh,
        "boot_id": boot_id,
        "interval_s": interval_s,
        "limites": station.takes_limits,
    }


def datagram_fields(
    station: Placed,
    estado: str,
    available: bool,
    held: bool,
    clock: tuple[str, int, float, float],
) -> dict[str, Any]:
    """The datagram fields every station sends; ``clock`` is (boot_id, seq, interval_s, now)."""
    boot_id, seq, interval_s, now = clock
    return {
        "id": station.point_id,
        "latitude": station.latitude,
        "longitude": station.longitude,
        "available": available,
        "queue_size": 1 if held else 0,
        "estado": estado,
        "potencia_kw": station.power_kw,
        "preco_kwh": station.price_kwh,
        "boot_id": boot_id,
        "seq": seq,
        "interval_s": interval_s,
        "ts": now,
    }


def ack_message(
    cache: OrderedDict[str, dict[str, Any]], cmd_id: str, error: str | None
) -> dict[str, Any]:
    """The ``ack`` for ``cmd_id``, remembered in ``cache`` (the last ACK_CACHE) so that
    a repeated command gets the same answer."""
    ack: dict[str, Any] = {"type": "ack", "cmd_id": cmd_id, "ok": error is None}
    if error is not None:
        ack["error"] = error
    cache[cmd_id] = ack
    while len(cache) > ACK_CACHE:
        cache.popitem(last=False)
    return ack


def due_resends(
    pending: dict[str, dict[str, Any]], resend_at: dict[str, float], now: float
) -> list[dict[str, Any]]:
    """The unacknowledged completions whose resend time has come (next one RESEND_S on)."""
    due: list[dict[str, Any]] = []
    for sid, at in resend_at.items():
        if at <= now:
            due.append(pending[sid])
            resend_at[sid] = now + RESEND_S
    return due
