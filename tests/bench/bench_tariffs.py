"""Tariffs: CPU per bill and ``bateria`` with ``custo_estimado``, beside main.

Each figure is the best per-operation microseconds of process CPU time over a
few rounds, measured in a child process whose ``PYTHONPATH`` is the tree under
test (only wire-level names: ``Core.handle_request`` / ``handle_station`` /
``handle_datagram``, which every broker has; the tariff figures use
``Core.tariffs``, which only a tree with tariffs has). ``main`` exports the
``main`` branch with ``git archive`` and runs old and new alternately:

* ``flat bill``: arrive, ack, complete and bill one session at a point without
  tariff (old and new: today's bills);
* ``tariff bill``: the same under a time-of-use tariff with a start fee and an
  idle fee (parking until a datagram says the connector is free): its CDR;
* ``bateria``: 1000 points, half of them tariffed (new), without and with
  ``capacidade_kwh`` / ``nivel_carregar`` (``custo_estimado`` on every point).

``python tests/bench/bench_tariffs.py KIND ROUNDS`` prints one figure for the
tree on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CENTER = (-12.97, -38.50)
POINTS = 1000
PER_ROUND = 300
ROUNDS = 5
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


def _request(kind: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "data": data}).encode()


def _setup(tariffed: bool) -> tuple[Any, float]:
    from broker.core import Core, CoreConfig
    from common.codec import decode_datagram

    counter = iter(range(10**9))
    core = Core(CoreConfig(), new_id=lambda prefix: f"{prefix}-{next(counter)}")
    now = 1_700_000_000.0
    rng = random.Random(1)
    for i in range(POINTS):
        body = {
            "id": f"BP{i:06d}",
            "latitude": CENTER[0] + rng.uniform(-0.5, 0.5),
            "longitude": CENTER[1] + rng.uniform(-0.5, 0.5),
            "available": True,
            "interval_s": 3600.0,
            "potencia_kw": 50.0,
            "preco_kwh": 2.0,
        }
        core.handle_datagram(decode_datagram(json.dumps(body).encode()), now)
    if tariffed:
        core.tariffs("set", json.dumps(TOU), None, None, "bench", now)
        core.tariffs("assign", None, "tou", "BP0000*", "bench", now)  # 100 points
        core.tariffs("assign", None, "tou", "BP0004*", "bench", now)
        core.tariffs("assign", None, "tou", "BP0001*", "bench", now)
        core.tariffs("assign", None, "tou", "BP0002*", "bench", now)
        core.tariffs("assign", None, "tou", "BP0003*", "bench", now)  # 500 in all
    return core, now


def bills(tariffed: bool, rounds: int) -> float:
    """Per bill: arrive, ack, complete (and unplug after parking when tariffed)."""
    from common.codec import decode_datagram, decode_request
    from common.messages import Ack, SessionComplete

    core, now = _setup(tariffed)
    pids = [f"BP{i:06d}" for i in range(0, 500 if tariffed else POINTS)]
    _position(core, pids[0])
    best = float("inf")
    n = 0
    for _ in range(rounds):
        t = time.process_time()
        for _k in range(PER_ROUND):
            pid = pids[n % len(pids)]
            vehicle = f"V{n}"
            n += 1
            arrive: dict[str, object] = {"id_ponto_recarga": pid, "nivel_bateria": 20}
            arrive |= {"nivel_carregar": 80, "metodo_pagamento": "Pix"}
            fx = core.handle_request(1, vehicle, decode_request(_request("chegada", arrive)), now)
            (start,) = [e.message for e in fx if type(e).__name__ == "SendStation"]
            core.handle_station(pid, Ack(cmd_id=start.cmd_id, ok=True), now)
            done = SessionComplete(
                session_id=start.session_id,
                vehicle_id=vehicle,
                energia_kwh=36.0,
                nivel_inicial=20.0,
                nivel_final=80.0,
                started_at=now,
                ended_at=now + 2400.0,
            )
            core.handle_station(pid, done, now + 2400.0)
            if tariffed:  # the vehicle leaves 10 minutes after charging: its bill
                lat, lon = _position(core, pid)
                body = {"id": pid, "latitude": lat, "longitude": lon, "conector_livre": True}
                body.update(available=True, interval_s=3600.0, potencia_kw=50.0, preco_kwh=2.0)
                core.handle_datagram(decode_datagram(json.dumps(body).encode()), now + 3000.0)
        best = min(best, (time.process_time() - t) / PER_ROUND * 1e6)
    return best


_POS: dict[str, tuple[float, float]] = {}


def _position(core: Any, pid: str) -> tuple[float, float]:
    if not _POS:
        for p in core.snapshot(0.0)["points"]:
            _POS[p["id"]] = (p["latitude"], p["longitude"])
    return _POS[pid]


def bateria(tariffed: bool, estimates: bool, rounds: int) -> float:
    """Per ``bateria`` of 10 points (the default limit) over 1000 points."""
    from common.codec import decode_request, encode_reply

    core, now = _setup(tariffed)
    rng = random.Random(2)
    requests = []
    for _ in range(97):
        data: dict[str, Any] = {"id_veiculo": "CAR1", "nivel_bateria": 15}
        lat, lon = CENTER[0] + rng.uniform(-0.5, 0.5), CENTER[1] + rng.uniform(-0.5, 0.5)
        data["localizacao"] = {"latitude": lat, "longitude": lon}
        if estimates:
            data["capacidade_kwh"] = 60
            data["nivel_carregar"] = 80
        requests.append(decode_request(_request("bateria", data)))
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        for i in range(970):
            for effect in core.handle_request(1, "CAR1", requests[i % 97], now + i * 0.05):
                if type(effect).__name__ == "Reply":
                    encode_reply(effect.type, effect.data, effect.request_id)
        best = min(best, (time.process_time() - t) / 970 * 1e6)
    return best


def measure(kind: str, rounds: int) -> float:
    if kind == "flat_bill":
        return bills(False, rounds)
    if kind == "tariff_bill":
        return bills(True, rounds)
    if kind == "bateria":
        return bateria(False, False, rounds)
    if kind == "bateria_tariffs":
        return bateria(True, False, rounds)
    if kind == "bateria_estimates":
        return bateria(True, True, rounds)
    raise SystemExit(f"unknown kind {kind}")


def _run(tree: Path, kind: str) -> float:
    out = subprocess.run(
        [sys.executable, __file__, kind, str(ROUNDS)],
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out)


def main() -> None:
    from tests.bench.bench_read_path import export_tree

    new_tree = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = export_tree("main", Path(tmp) / "main")
        cases = [
            ("flat bill", "flat_bill", "flat_bill"),
            ("tariff bill (vs main's flat bill)", "flat_bill", "tariff_bill"),
            ("bateria", "bateria", "bateria"),
            ("bateria, half the points tariffed", "bateria", "bateria_tariffs"),
            ("bateria + custo_estimado (vs main's bateria)", "bateria", "bateria_estimates"),
        ]
        results: dict[tuple[str, str], list[float]] = {}
        for k in range(3):
            for label, old_kind, new_kind in cases:
                runs = (("old", old_tree, old_kind), ("new", new_tree, new_kind))
                for side, tree, kind in runs[:: 1 if k % 2 == 0 else -1]:
                    results.setdefault((label, side), []).append(_run(tree, kind))
        for label, _o, _n in cases:
            old, new = min(results[(label, "old")]), min(results[(label, "new")])
            print(
                f"{label}: main {old:7.1f} us  this tree {new:7.1f} us per operation  "
                f"(throughput new/old {old / new:4.2f})",
                flush=True,
            )
        est = min(results[("bateria + custo_estimado (vs main's bateria)", "new")])
        plain = min(results[("bateria, half the points tariffed", "new")])
        print(f"bateria with custo_estimado vs without, this tree: {plain / est:4.2f}x throughput")


if __name__ == "__main__":
    print(f"{measure(sys.argv[1], int(sys.argv[2])):.2f}")
