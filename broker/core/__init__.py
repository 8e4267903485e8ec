"""The broker core: a pure, synchronous state machine.

Theory of operation
===================

The core never does I/O and never reads a clock. The broker's edges decode
what arrives (vehicle requests, status datagrams, station messages), call one
method of :class:`Core` with the current time ``now`` and get back a list of
effects (:mod:`broker.core.effects`): ``Persist`` records to write, ``Publish``
bus events (with a gap-free ``seq``), ``Reply`` and ``Push`` messages for
vehicles, ``SendStation`` commands. The service commits every Persist/Publish
of a loop turn before it sends anything, so nothing is confirmed before it is
durable.

State lives in :class:`broker.core.engine.Engine`:

* points (:mod:`.points`): static facts from the latest report, liveness from
  the last thing heard (window ``max(offline_after_s, 3 * interval_s)``),
  the station's reported state, and the broker-derived ``estado``
  (offline > indisponivel > carregando > reservado > disponivel);
* a spatial index (:mod:`.geoindex`) for exact k-nearest queries;
* per-point FIFO queues of reservations (:mod:`.queues`); the head holds the
  *turn* while the point is usable (online, not faulted) and has no session
  and no start in progress. A turn has a deadline
  ``max(created_at + eta, turn_started_at) + hold_s``;
* the start handshake (:class:`.sessions.PendingStart`): ``chegada`` sends the
  station ``start``; the vehicle's reply waits for the station's ``ack``
  (``started``) or its absence (``point_unreachable``);
* running and billed sessions (:mod:`.sessions`), billed exactly once into the
  vehicle's account (:mod:`.accounts`), money in ``Decimal``.

Time-driven rules run through one timer heap (:mod:`.timers`) with lazy
invalidation: reservation deadlines, offline windows, grace periods and ack
timeouts. ``next_due()`` gives the earliest live entry; ``tick(now)`` fires
every due entry whose token still matches the object's state and drops the
rest. Hearing from a point never pushes a timer once one is armed: the offline
timer re-arms itself at ``last_heard + window`` when it fires early.

Whenever a point's situation may have changed, ``Engine.refresh`` re-derives
usability (starting or clearing the grace period), passes the turn if it can
and publishes ``point.status`` when the ``estado`` changed. That single funnel
is what keeps the invariants: capacity is checked at the only place a
reservation is added, at most the head holds the turn, and a session id is
billed only if absent from the billed set.

``restore(records, last_seq, now)`` rebuilds all of it from the persisted
records (tables ``point``, ``reservation``, ``session``, ``meta``): queues in
their original order with their deadlines, running sessions, accounts;
restored points are offline until heard again and their grace period starts
at ``now``.
"""

from __future__ import annotations

from broker.core.config import CoreConfig
from broker.core.core import Core

__all__ = ["Core", "CoreConfig"]
