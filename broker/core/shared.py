"""What every owner of core state shares: the config, ids, the event log, the timers.

:class:`EventLog` is the one place a bus event gets its ``seq`` (gap-free,
shared by all topics). :class:`Shared` is handed to each table owner
(:mod:`.point_table`, :mod:`.reservation_table`, :mod:`.session_table`) so that
they publish, schedule and count through the same objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from broker.core.config import CoreConfig
from broker.core.effects import Effect, Publish
from broker.core.timers import TimerHeap
from common.events import EventData, event_fields
from common.messages import BusEvent
from common.tariff_book import TariffBook

#: counters reported by ``stats`` (each owner counts its own through :class:`Shared`)
COUNTERS = (
    "datagrams_stale",
    "datagrams_replayed",
    "session_duplicates",
    "sessions_unknown",
    "acks_unknown",
    "points_refused",
    "sessions_out_of_bounds",
    "parking_capped",
    "sessions_energy_bounded",
    "energy_excess_wh",
    "reservations_rate_limited",
    "holds_refused",
)


class EventLog:
    """The bus event sequence: ``publish`` appends an event with the next seq."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0  # the seq of the last event published (0 before any)

    def publish(self, fx: list[Effect], data: EventData, now: float) -> None:
        """Publish ``data`` on its topic with the next seq."""
        self.seq += 1
        fx.append(Publish(BusEvent(self.seq, now, data.TOPIC, event_fields(data))))

    def restore(self, last_seq: int) -> None:
        self.seq = max(self.seq, int(last_seq))


@dataclass(slots=True)
class Shared:
    """The config, id source, event log, timer heap and counters of one core."""

    cfg: CoreConfig
    new_id: Callable[[str], str]
    log: EventLog = field(default_factory=EventLog)
    timers: TimerHeap = field(default_factory=TimerHeap)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    #: the operator's tariffs and their assignments (docs/tariffs.md)
    tariffs: TariffBook = field(init=False)

    def __post_init__(self) -> None:
        self.tariffs = TariffBook(self.cfg.tz)
