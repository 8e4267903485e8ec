"""The invariants of a chaos run, checked on what was collected after it settled (pure).

Inputs (:class:`Facts`): the journal (every request, reply, push and connection
change of the drivers, every fault), each region's event history, snapshot and
accounts, the region seqs found in the JetStream stream, the ledger's sessions,
the exit code of ``billing reconcile`` and the containers' states. Checks:

1. every reservation a driver was told is ``reserved`` was persisted
   (``reservation.created``) and ended as served (``charging.started`` with its
   id), cancelled (by the driver or a rule) or expired by the rule;
2. every session started was completed, and every completed session is billed
   exactly once: one ``charging.completed``, once in the broker's accounts, once
   in the ledger, never two ``custo_final``, and one ``custo_final`` where the
   driver's connection is proved to have carried what the broker wrote then;
3. ``billing reconcile`` over both regions exits 0;
4. each region's event history and its JetStream stream hold seq 1..N, no gap,
   no repeat;
5. no point is ``carregando`` without a session or ``reservado`` without a queue;
6. no service is left crashed.

Each anomaly names the ids it is about; :func:`history_of` picks, from the
journal and the events, the shortest history that shows it: only the lines
naming those ids, and the faults in force meanwhile.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TERMINAL_TOPICS = ("reservation.cancelled", "reservation.expired")


@dataclass
class RegionFacts:
    events: list[dict[str, Any]]
    snapshot: dict[str, Any]
    accounts: dict[str, Any]
    stream_seqs: list[int]


@dataclass
class Facts:
    seed: int
    journal: list[dict[str, Any]]
    regions: dict[str, RegionFacts]
    ledger_sessions: list[str]  # session ids, one entry per ledger row
    reconcile_rc: int
    containers: dict[str, str]  # service -> "running", "running/healthy", "exited", ...
    expected: Sequence[str] = ()  # services that must be running at the end


@dataclass(frozen=True)
class Anomaly:
    check: str
    detail: str
    keys: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "detail": self.detail, "keys": list(self.keys)}


@dataclass
class Report:
    anomalies: list[Anomaly] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.anomalies


def _reserved(journal: Iterable[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(region, vehicle, reservation id) of every ``reserved`` reply a driver got."""
    out = []
    for line in journal:
        data = line.get("data")
        reply = line.get("kind") == "reply" and line.get("type") == "reserva_response"
        if reply and isinstance(data, dict) and data.get("code") == "reserved":
            out.append((line["region"], line["who"], str(data.get("reservation_id"))))
    return out


def check_reservations(facts: Facts, report: Report) -> None:
    told = _reserved(facts.journal)
    ended: dict[str, set[str]] = defaultdict(set)
    created: dict[str, set[str]] = defaultdict(set)
    for name, region in facts.regions.items():
        for ev in region.events:
            rid = (ev.get("data") or {}).get("reservation_id")
            if not rid:
                continue
            if ev["topic"] == "reservation.created":
                created[name].add(rid)
            elif ev["topic"] in TERMINAL_TOPICS or ev["topic"] == "charging.started":
                ended[name].add(rid)
    live = {
        name: {
            r["reservation_id"] for q in (region.snapshot.get("queues") or {}).values() for r in q
        }
        for name, region in facts.regions.items()
    }
    for name, vehicle, rid in told:
        if rid not in created[name]:
            report.anomalies.append(Anomaly("reservation", f"{vehicle} was told {rid} is "
                                            "reserved but the broker never recorded it",
                                            (rid, vehicle)))  # fmt: skip
        elif rid not in ended[name]:
            where = "still queued after the run" if rid in live[name] else "silently gone"
            report.anomalies.append(Anomaly("reservation", f"{rid} of {vehicle}: {where}",
                                            (rid, vehicle)))  # fmt: skip
    report.figures["reservations_confirmed"] = len(told)


def _delivered(journal: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per driver, the spans ``(opened, proved)`` of its connections: everything the broker
    wrote on that connection from ``opened`` to ``proved`` reached the driver.

    A connection is proved up to time ``s`` by a reply that came back on it to a request
    sent at ``s``: the broker wrote that reply after whatever it wrote before reading the
    request, and TCP delivers in order. A connection that looked open but was dead (its
    peer cut off the network) proves nothing, however long it stayed "open".
    """
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    opened: dict[str, float] = {}
    proved: dict[str, float] = {}
    sent: dict[tuple[str, Any], float] = {}
    for line in journal:
        who, kind, t = line.get("who", ""), line.get("kind"), float(line.get("t", 0))
        if kind == "connected":
            opened[who], proved[who] = t, t
        elif kind == "send":
            sent[(who, line.get("req"))] = t
        elif kind == "reply" and who in opened:
            proved[who] = max(proved[who], sent.get((who, line.get("req")), opened[who]))
        elif kind in ("disconnected", "done") and who in opened:
            spans[who].append((opened.pop(who), proved.pop(who)))
    for who, t in opened.items():
        spans[who].append((t, proved[who]))
    return spans


def check_bills(facts: Facts, report: Report, margin_s: float = 3.0) -> None:
    final = Counter(
        (line.get("data") or {}).get("session_id")
        for line in facts.journal
        if line.get("kind") == "push" and line.get("type") == "custo_final"
    )
    spans = _delivered(facts.journal)
    ledger = Counter(facts.ledger_sessions)
    sessions = completed_total = 0
    for name, region in facts.regions.items():
        started = {ev["data"]["session_id"]: ev for ev in region.events
                   if ev["topic"] == "charging.started"}  # fmt: skip
        done = Counter(ev["data"]["session_id"] for ev in region.events
                       if ev["topic"] == "charging.completed")  # fmt: skip
        running = {s.get("session_id") for s in region.snapshot.get("sessions") or []}
        accounts = Counter(
            s["session_id"]
            for statement in (region.accounts or {}).values()
            for s in statement.get("sessoes", [])
        )
        sessions += len(started)
        for sid in started:
            if sid not in done and sid not in running:
                report.anomalies.append(
                    Anomaly("session", f"{sid} started in {name} and never completed", (sid,))
                )
            elif sid in running:
                report.anomalies.append(
                    Anomaly("session", f"{sid} in {name} still running after the run", (sid,))
                )
        for ev in region.events:
            if ev["topic"] != "charging.completed":
                continue
            sid, vehicle = ev["data"]["session_id"], ev["data"]["vehicle_id"]
            completed_total += 1
            keys = (sid,)
            if done[sid] != 1:
                report.anomalies.append(Anomaly("bill", f"{sid}: completed {done[sid]} times",
                                                keys))  # fmt: skip
            if accounts[sid] != 1:
                report.anomalies.append(
                    Anomaly("bill", f"{sid}: {accounts[sid]} times in {name}'s accounts", keys)
                )
            if ledger[sid] != 1:
                report.anomalies.append(Anomaly("bill", f"{sid}: {ledger[sid]} times in the "
                                                "ledger", keys))  # fmt: skip
            if final[sid] > 1:
                report.anomalies.append(Anomaly("bill", f"{sid}: custo_final pushed "
                                                f"{final[sid]} times", keys))  # fmt: skip
            at = float(ev.get("ts") or 0)
            held = any(a <= at - margin_s and at + margin_s <= b for a, b in spans.get(vehicle, []))
            if held and final[sid] == 0:
                why = f"{sid}: {vehicle}'s connection carried a later reply but no custo_final"
                report.anomalies.append(Anomaly("push", why, keys))
    report.figures["sessions_started"] = sessions
    report.figures["bills"] = completed_total
    report.figures["custo_final_pushes"] = sum(final.values())
    if facts.reconcile_rc != 0:
        report.anomalies.append(
            Anomaly("reconcile", f"billing reconcile exited {facts.reconcile_rc}")
        )


def _gaps(seqs: Sequence[int], upto: int | None = None) -> str | None:
    """Why ``seqs`` is not exactly 1..N (N = ``upto`` when given), or None."""
    repeats = [s for s, n in Counter(seqs).items() if n > 1]
    if repeats:
        return f"repeated seqs {sorted(repeats)[:5]}"
    top = max(seqs, default=0) if upto is None else upto
    missing = sorted(set(range(1, top + 1)) - set(seqs))
    if missing:
        return f"missing seqs {missing[:5]}{' ...' if len(missing) > 5 else ''} of 1..{top}"
    extra = [s for s in seqs if s > top]
    if extra:
        return f"seqs past {top}: {extra[:5]}"
    return None


def check_sequences(facts: Facts, report: Report) -> None:
    for name, region in facts.regions.items():
        seqs = [int(ev["seq"]) for ev in region.events]
        last = int(region.snapshot.get("seq") or max(seqs, default=0))
        if (why := _gaps(seqs, last)) is not None:
            report.anomalies.append(Anomaly("events", f"{name}'s event history: {why}"))
        if (why := _gaps(region.stream_seqs, last)) is not None:
            report.anomalies.append(Anomaly("stream", f"{name}'s JetStream stream: {why}"))
        report.figures[f"events_{name}"] = last


def check_points(facts: Facts, report: Report) -> None:
    for name, region in facts.regions.items():
        snap = region.snapshot
        queues = snap.get("queues") or {}
        for p in snap.get("points") or []:
            pid, estado = p.get("id"), p.get("estado")
            if estado == "carregando" and not p.get("session_id"):
                report.anomalies.append(Anomaly("point", f"{name} {pid} is carregando "
                                                "without a session", (str(pid),)))  # fmt: skip
            if estado == "reservado" and not queues.get(pid):
                report.anomalies.append(Anomaly("point", f"{name} {pid} is reservado "
                                                "without a reservation", (str(pid),)))  # fmt: skip


def check_processes(facts: Facts, report: Report) -> None:
    for service in facts.expected:
        state = facts.containers.get(service, "missing")
        if not state.startswith("running") or state.endswith("unhealthy"):
            report.anomalies.append(Anomaly("process", f"{service} is {state}", (service,)))


def check(facts: Facts) -> Report:
    report = Report()
    check_reservations(facts, report)
    check_bills(facts, report)
    check_sequences(facts, report)
    check_points(facts, report)
    check_processes(facts, report)
    faults = Counter(line["type"] for line in facts.journal if line.get("kind") == "fault")
    report.figures["faults"] = dict(sorted(faults.items()))
    report.figures["trips"] = sum(
        1 for line in facts.journal
        if line.get("kind") == "reply" and line.get("type") == "chegada_response"
        and (line.get("data") or {}).get("code") == "started"
    )  # fmt: skip
    report.figures["anomalies"] = len(report.anomalies)
    report.figures["seed"] = facts.seed
    return report


def _mentions(obj: Any, keys: frozenset[str]) -> bool:
    if isinstance(obj, str):
        return obj in keys
    if isinstance(obj, Mapping):
        return any(_mentions(v, keys) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_mentions(v, keys) for v in obj)
    return False


def history_of(anomaly: Anomaly, facts: Facts) -> list[str]:
    """The shortest history showing ``anomaly``: lines naming its ids, faults meanwhile."""
    keys = frozenset(anomaly.keys)
    lines: list[tuple[float, str]] = []
    drivers = {line.get("who") for line in facts.journal if keys and _mentions(line, keys)}
    for line in facts.journal:
        link = line.get("kind") in ("connected", "disconnected") and line.get("who") in drivers
        if link or (keys and _mentions(line, keys)):
            lines.append((float(line["t"]), f"{line.get('who')} {line.get('kind')} "
                          f"{line.get('type', '')} {line.get('data', '')}"))  # fmt: skip
    for name, region in facts.regions.items():
        for ev in region.events:
            if keys and _mentions(ev.get("data"), keys):
                lines.append((float(ev.get("ts") or 0), f"{name} #{ev['seq']} {ev['topic']} "
                              f"{ev['data']}"))  # fmt: skip
    if lines:
        first, last = min(t for t, _ in lines), max(t for t, _ in lines)
        for line in facts.journal:
            if line.get("kind") in ("fault", "heal") and first - 10 <= line["t"] <= last:
                lines.append((float(line["t"]), f"FAULT {line['kind']} {line['type']} "
                              f"{line['who']}"))  # fmt: skip
    lines.sort(key=lambda item: item[0])
    return [f"{t:.3f} {text}" for t, text in lines]
