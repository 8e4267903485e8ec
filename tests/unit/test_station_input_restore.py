"""Property: nothing a station sends can be stored in a form that stops a restart.

Arbitrary station messages (msgpack maps with any floats, NaN and infinities
included, for hello, ack and session_complete) and status datagrams (JSON with
any finite figures) go through the same decoders as on the wire and, when they
decode, into the core next to a point with a running session. Every record and
event the core asks to persist is written to a real SQLite store; a new core
must then restore from that store without raising, and a billed session's
figures must be within the contract's bounds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.core import Core
from broker.core.effects import Persist, Rejected
from broker.store import Store
from common.codec import decode_datagram, decode_station_message
from common.errors import EVError
from tests.unit.test_core_harness import Harness

ANY_FLOAT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 20.0, 60.0, 80.0, 100.0, 100.5, 1000.0, 1e30, -0.0]),
)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
ID = st.sampled_from(["CP01", "CP02", "X"])


def completions(session_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "type": st.just("session_complete"),
            "session_id": st.sampled_from([*session_ids, "nope"]),
            "vehicle_id": st.sampled_from(["V1", "V2"]),
            "energia_kwh": ANY_FLOAT,
            "nivel_inicial": ANY_FLOAT,
            "nivel_final": ANY_FLOAT,
            "started_at": st.one_of(ANY_FLOAT, st.text(max_size=5)),
            "ended_at": ANY_FLOAT,
            "reason": st.sampled_from(["target_reached", "stopped", "fault"]),
        },
        optional={"energia_medida_kwh": ANY_FLOAT},
    )


HELLOS = st.fixed_dictionaries(
    {
        "type": st.just("hello"),
        "id": ID,
        "latitude": ANY_FLOAT,
        "longitude": ANY_FLOAT,
        "potencia_kw": ANY_FLOAT,
        "preco_kwh": ANY_FLOAT,
        "boot_id": st.sampled_from(["b1", "b2", ""]),
        "interval_s": ANY_FLOAT,
    }
)
ACKS = st.fixed_dictionaries(
    {"type": st.just("ack"), "cmd_id": st.sampled_from(["cmd-1", "cmd-9"]), "ok": st.booleans()}
)
DATAGRAMS = st.fixed_dictionaries(
    {"id": ID, "latitude": FINITE, "longitude": FINITE},
    optional={
        "available": st.booleans(),
        "estado": st.sampled_from(["disponivel", "carregando", "indisponivel"]),
        "potencia_kw": FINITE,
        "preco_kwh": FINITE,
        "energia_kwh": FINITE,
        "battery": FINITE,
        "boot_id": st.sampled_from(["b1", "b3"]),
        "seq": st.integers(-5, 10**6),
        "interval_s": FINITE,
        "session_id": st.text(max_size=5),
    },
)


def inputs(session_ids: list[str]) -> st.SearchStrategy[list[tuple[str, str, bytes]]]:
    station = st.tuples(
        st.just("station"), ID, st.one_of(completions(session_ids), HELLOS, ACKS).map(msgpack.packb)
    )
    status = st.tuples(
        st.just("status"), st.just(""), DATAGRAMS.map(lambda d: json.dumps(d).encode())
    )
    return st.lists(st.one_of(station, status), max_size=25)


def scene() -> tuple[Harness, str]:
    h = Harness()
    h.hello("CP01", preco_kwh=2.0)
    h.hello("CP02", preco_kwh=3.0)
    sid = h.start_charging("V1", "CP01", battery=20, target=80, capacidade_kwh=60)
    return h, sid


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_no_station_input_stops_a_restart(tmp_path_factory: Any, data: st.DataObject) -> None:
    h, sid = scene()
    for kind, point, raw in data.draw(inputs([sid])):
        try:
            if kind == "station":
                msg = decode_station_message(raw)
                if getattr(msg, "id", point) != point:
                    continue  # the edge drops a hello whose id is not the routing id
                fx = h.apply(h.core.handle_station(point, msg, h.at(1)))
            else:
                fx = h.apply(h.core.handle_datagram(decode_datagram(raw), h.at(1)))
        except EVError:
            continue  # refused by the decoder: dropped and counted at the edge
        assert all(isinstance(e.reason, str) for e in fx if isinstance(e, Rejected))
    path = Path(tmp_path_factory.mktemp("store")) / "b.db"
    with Store(str(path)) as store:
        store.write(
            # (ignored below) the store's table names are plain str here
            [Persist(t, k, v) for (t, k), v in h.store.items()],  # type: ignore[arg-type]
            h.events,
        )
    with Store(str(path)) as store:
        records, last_seq = store.load()
    core = Core(h.config, h.new_id)
    core.restore(records, last_seq, h.now + 5)  # never raises
    for table, _, value in records:
        if table == "point":
            assert 0 < value["potencia_kw"] <= 1000 and 0 <= value["preco_kwh"] <= 100
        if table == "session" and value.get("nivel_final") is not None:
            assert 0 <= value["nivel_inicial"] <= value["nivel_final"] <= 100
            assert math.isfinite(float(value["energy_kwh"])) and float(value["energy_kwh"]) <= 60
