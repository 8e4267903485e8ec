"""The monitor's pure view model: snapshot + scripted events, rendered with Console(record=True)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import msgspec
from rich.console import Console

from broker.consumers.monitor.view import STATES, MonitorView
from common.events import EVENT_TYPES
from common.messages import BusEvent

T0 = 1_744_020_000.0


def render_text(view: MonitorView, now: float = T0 + 100, width: int = 160) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(view.render(now))
    return console.export_text()


def row_of(text: str, point_id: str) -> str:
    return next(line for line in text.splitlines() if f" {point_id} " in line)


def complete(topic: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every other field of the topic's struct at a blank value, as published."""
    blank: dict[Any, Any] = {str: "", float: 0.0, int: 0, bool: False}
    full = {
        f.name: blank.get(f.type, "")
        for f in msgspec.structs.fields(EVENT_TYPES[topic])
        if f.default is not msgspec.UNSET  # optional extras (a bill's cdr) stay absent
    }
    return {**full, **data}


class Script:
    """Numbered events from a starting seq (fields not given are blank)."""

    def __init__(self, view: MonitorView, seq: int) -> None:
        self.view, self.seq = view, seq

    def __call__(self, topic: str, now: float = T0 + 50, **data: Any) -> None:
        self.seq += 1
        self.view.apply(BusEvent(self.seq, now, topic, complete(topic, data)), now)


SNAPSHOT: dict[str, Any] = {
    "seq": 10,
    "points": [
        {"id": "CP01", "estado": "disponivel", "last_heard": T0},
        {"id": "CP02", "estado": "carregando", "last_heard": "2025-04-07T10:00:30Z"},
        {"id": "CP03", "estado": "offline"},
        {"id": "CP04", "estado": "indisponivel"},
    ],
    "queues": {"CP02": [{"vehicle_id": "CAR7", "posicao": 1}, {"vehicle_id": "CAR8"}]},
    "sessions": [
        {"session_id": "S1", "vehicle_id": "CAR5", "id_ponto_recarga": "CP02", "energia_kwh": 3.25}
    ],
}


def test_snapshot_is_right_from_the_first_frame() -> None:
    view = MonitorView(page_size=10)
    view.load_snapshot(SNAPSHOT)
    text = render_text(view)
    assert "points 4" in text and "online 3" in text and "charging 1" in text
    assert "queued 2" in text and "seq 10" in text
    cp02 = row_of(text, "CP02")
    assert "carregando" in cp02 and "CAR5" in cp02 and "3.25" in cp02 and "CAR7, CAR8" in cp02
    assert "offline" in row_of(text, "CP03") and "indisponivel" in row_of(text, "CP04")
    assert "100s" in row_of(text, "CP01")
    # busy points first
    lines = [line for line in text.splitlines() if " CP0" in line]
    assert [line.split()[1] for line in lines] == ["CP02", "CP01", "CP04", "CP03"]


def test_scripted_sequence_shows_the_right_states() -> None:
    view = MonitorView(page_size=10)
    view.load_snapshot(SNAPSHOT)
    ev = Script(view, 10)
    ev("point.registered", point_id="CP09", estado="disponivel")
    ev("reservation.created", point_id="CP01", vehicle_id="CAR1", reservation_id="R1")
    ev("reservation.turn", point_id="CP01", vehicle_id="CAR1", reservation_id="R1")
    ev("reservation.created", point_id="CP01", vehicle_id="CAR2", reservation_id="R2")
    assert view.points["CP01"].state == "reservado"
    ev("charging.started", point_id="CP01", vehicle_id="CAR1", session_id="S2")
    ev("point.status", point_id="CP01", estado="carregando")
    ev("charging.completed", point_id="CP02", vehicle_id="CAR5", session_id="S1", cost=6.5)
    ev("reservation.cancelled", point_id="CP02", vehicle_id="CAR8", reservation_id="R8")
    ev("point.offline", point_id="CP04")
    ev("point.online", point_id="CP03")
    ev("point.status", point_id="CP03", estado="disponivel")
    text = render_text(view)
    cp01 = row_of(text, "CP01")
    assert "carregando" in cp01 and "CAR1" in cp01 and "CAR2" in cp01 and "0.00" in cp01
    cp02 = row_of(text, "CP02")
    assert "reservado" in cp02 and "CAR5" not in cp02 and "CAR8" not in cp02 and "CAR7" in cp02
    assert "offline" in row_of(text, "CP04")
    assert "disponivel" in row_of(text, "CP03") and "disponivel" in row_of(text, "CP09")
    assert "queued 2" in text and "charging 1" in text and "online 4" in text
    assert "#21" in text and "charging.completed" in text  # latest events
    assert view.counts() == {
        "carregando": 1, "reservado": 1, "disponivel": 2, "indisponivel": 0, "offline": 1,
    }  # fmt: skip


def test_events_at_or_below_the_snapshot_seq_are_ignored() -> None:
    view = MonitorView()
    view.load_snapshot(SNAPSHOT)
    view.apply(BusEvent(10, T0, "point.offline", {"point_id": "CP01"}), T0)
    assert view.points["CP01"].state == "disponivel" and view.events_seen == 0


class CountingDict(dict[str, Any]):
    """A dict that counts single lookups and walks over all its entries."""

    lookups = walks = 0

    def __getitem__(self, key: str) -> Any:
        self.lookups += 1
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[str]:
        self.walks += 1
        return super().__iter__()

    def values(self) -> Any:
        self.walks += 1
        return super().values()

    def items(self) -> Any:
        self.walks += 1
        return super().items()


def test_ten_thousand_points_render_one_page_only() -> None:
    view = MonitorView(page_size=25)
    view.load_snapshot(
        {
            "seq": 0,
            "points": [{"id": f"CP{i:05d}", "estado": "disponivel"} for i in range(10_000)],
            "queues": {},
            "sessions": [],
        }
    )
    ev = Script(view, 0)
    for i in range(0, 10_000, 100):
        ev("charging.started", point_id=f"CP{i:05d}", vehicle_id=f"CAR{i}", session_id=f"S{i}")
    for i in range(50, 10_000, 1000):
        ev("point.offline", point_id=f"CP{i:05d}")
    assert view.pages == 400
    # a page, not 10,000 rows: rendering looks up the page's points and walks no
    # collection of all of them (the time it takes is a figure of tests/bench)
    view.points = CountingDict(view.points)
    first = render_text(view)
    assert view.points.lookups == 25 and view.points.walks == 0
    assert "page 1/400" in first and "charging 100" in first and "online 9990" in first
    assert sum(" CP" in line for line in first.splitlines()) == 25
    assert "carregando" in row_of(first, "CP00000")
    view.page = 4  # points 100..124: the rest of the charging ones, then available ones
    fifth = render_text(view)
    assert "carregando" in fifth and "disponivel" in fifth
    view.last_page()
    last = render_text(view)
    assert "page 400/400" in last and "offline" in row_of(last, "CP09050")
    view.next_page()
    assert view.page == 399
    view.first_page()
    view.prev_page()
    assert view.page == 0


def test_event_rate_is_over_a_sliding_window() -> None:
    view = MonitorView()
    view.load_snapshot({"seq": 0})
    for i in range(10):
        view.apply(BusEvent(i + 1, T0, "vehicle.connected", {"vehicle_id": "CAR1"}), T0 + i * 0.1)
    assert view.rate(T0 + 1) == 10 / 5.0
    assert view.rate(T0 + 10) == 0.0
    assert set(view.counts()) == set(STATES)


def test_odd_snapshot_and_event_values_do_not_break_the_view() -> None:
    view = MonitorView()
    view.load_snapshot(
        {
            "seq": "x",
            "points": [{"id": "CP1", "energia_kwh": "lots", "last_seen": "yesterday"}, 7, {}],
            "queues": {"CP1": "not a list", "CP2": [None, 5, {"vehicle_id": "CAR1"}]},
            "sessions": [{"point_id": "CP1", "energy_kwh": None}, "junk"],
        }
    )
    view.apply(BusEvent(1, T0, "point.status", {"point_id": "CP1", "energia_kwh": "?"}), T0)
    view.apply(BusEvent(2, T0, "reservation.created", {"vehicle_id": "CAR2"}), T0)  # no point
    text = render_text(view)
    assert "carregando" in row_of(text, "CP1") and "CAR1" in row_of(text, "CP2")
    assert view.seq == 2


def test_a_small_screen_shows_the_latest_events_and_a_shorter_page() -> None:
    view = MonitorView(page_size=20)
    view.load_snapshot(
        {"seq": 1, "points": [{"id": f"CP{i:02d}", "estado": "disponivel"} for i in range(40)]}
    )
    script = Script(view, 1)
    for i in range(5):
        script("point.status", point_id=f"CP{i:02d}", estado="disponivel")
    console = Console(record=True, width=120, height=24, file=io.StringIO(), color_system=None)
    console.print(view.render(T0 + 100, 24))
    lines = console.export_text().splitlines()
    assert len(lines) <= 24, "\n".join(lines)
    text = "\n".join(lines)
    assert "latest events" in text and "#6 " in text and "point.status" in text
    assert view.page_size < 20 and view.pages > 2  # the page shrank to fit the screen


def test_heard_comes_from_the_snapshot_and_is_refreshed() -> None:
    view = MonitorView()
    view.load_snapshot(
        {"seq": 3, "points": [{"id": "CP01", "estado": "disponivel", "last_heard": T0 + 90}]}
    )
    assert " 10s" in row_of(render_text(view, now=T0 + 100), "CP01")
    view.refresh_heard({"seq": 3, "points": [{"id": "CP01", "last_heard": "2025-04-07T10:00:00Z"}]})
    assert view.points["CP01"].last_heard is not None
    view.refresh_heard({"seq": 4, "points": [{"id": "CP01", "last_heard": T0 + 99}]})
    assert " 1s" in row_of(render_text(view, now=T0 + 100), "CP01")
    view.refresh_heard({"points": [{"id": "NEW1", "last_heard": T0}]})  # unknown: ignored
    assert "NEW1" not in view.points
