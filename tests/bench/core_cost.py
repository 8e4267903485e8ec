"""CPU cost of one request through the broker's core and reply encoder, no sockets.

Run as a script with the tree to measure first on ``PYTHONPATH`` (so an older
checkout can be measured with the same script):
``PYTHONPATH=TREE python tests/bench/core_cost.py POINTS KIND ROUNDS``. Prints
the best per-request microseconds of process CPU time over ROUNDS rounds. Only
wire-level names are used (decode_datagram, decode_request, Core.handle_request,
Core.handle_station, encode_reply), which every version of the broker has.

KIND is a request type sent as is (``ping``, ``bateria``, ``consulta``) or one of
the reply cases:

* ``reserva``: accepted, each by a new vehicle, spread over the points (queues stay short);
* ``refusal``: ``reserva`` at an unknown point (``unknown_point``);
* ``status``: a vehicle holding a reservation (``status_veiculo`` with its view);
* ``custos``: a vehicle with three billed sessions (``extrato``).

``python tests/bench/core_cost.py compare OLD_TREE [POINTS:KIND ...]`` runs both
trees (OLD_TREE and this one) alternately, ``ROUNDS`` times each, and prints the
best of each side by side.
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
REPLY_CASES = ("reserva", "refusal", "status", "custos")
COMPARE_ROUNDS = 5
DEFAULT_CASES = ("10:ping", "1000:bateria", *(f"1000:{kind}" for kind in REPLY_CASES))


def _request(kind: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "data": data}).encode()


def _effects_of(fx: list[Any], name: str) -> list[Any]:
    return [e for e in fx if type(e).__name__ == name]


def _bill(core: Any, vehicle: str, pid: str, now: float) -> None:
    """Charge ``vehicle`` at the free point ``pid`` and complete the session."""
    from common.codec import decode_request
    from common.messages import Ack, SessionComplete

    arrive = {"id_ponto_recarga": pid, "nivel_bateria": 20, "nivel_carregar": 80}
    # (ignored below) the request TypedDict narrows metodo_pagamento to the wire literals
    arrive["metodo_pagamento"] = "Pix"  # type: ignore[assignment]
    fx = core.handle_request(1, vehicle, decode_request(_request("chegada", arrive)), now)
    (start,) = [e.message for e in _effects_of(fx, "SendStation")]
    core.handle_station(pid, Ack(cmd_id=start.cmd_id, ok=True), now)
    done = SessionComplete(
        session_id=start.session_id,
        vehicle_id=vehicle,
        energia_kwh=36.0,
        nivel_inicial=20.0,
        nivel_final=80.0,
        started_at=now,
        ended_at=now + 600.0,
    )
    core.handle_station(pid, done, now + 600.0)


def main(points: int, kind: str, rounds: int) -> float:
    from broker.core import Core, CoreConfig
    from common.codec import decode_datagram, decode_request, encode_reply

    core = Core(CoreConfig(), new_id=lambda prefix: f"{prefix}-{random.random()}")
    now = 1_700_000_000.0
    rng = random.Random(1)
    for i in range(points):
        body = {
            "id": f"BP{i:06d}",
            "latitude": CENTER[0] + rng.uniform(-0.5, 0.5),
            "longitude": CENTER[1] + rng.uniform(-0.5, 0.5),
            "available": True,
            "interval_s": 3600.0,
        }
        core.handle_datagram(decode_datagram(json.dumps(body).encode()), now)
    per_round = 970
    vehicles = ["CAR1"] * per_round * rounds
    if kind == "reserva":
        vehicles = [f"V{i}" for i in range(per_round * rounds)]
        requests = [
            _request(kind, {"id_ponto_recarga": f"BP{i % points:06d}"})
            for i in range(len(vehicles))
        ]
    elif kind == "refusal":
        requests = [_request("reserva", {"id_ponto_recarga": "NOPE"})] * 97
    elif kind == "status":
        hold = decode_request(_request("reserva", {"id_ponto_recarga": "BP000000"}))
        core.handle_request(1, "CAR1", hold, now)
        requests = [_request("status", {})] * 97
    elif kind == "custos":
        for _ in range(3):
            _bill(core, "CAR1", "BP000001", now)
        requests = [_request("custos", {})] * 97
    else:
        requests = []
        for _ in range(97):
            lat, lon = CENTER[0] + rng.uniform(-0.5, 0.5), CENTER[1] + rng.uniform(-0.5, 0.5)
            data: dict[str, Any] = {"id_veiculo": "CAR1", "nivel_bateria": 15}
            data["localizacao"] = {"latitude": lat, "longitude": lon}
            if kind == "ping":
                data = {"id_veiculo": "CAR1"}
            requests.append(_request(kind, data))
    decoded = [decode_request(r) for r in requests]
    work = [(vehicles[i], decoded[i % len(decoded)]) for i in range(len(vehicles))]
    best = float("inf")
    for r in range(rounds):
        todo = work[r * per_round : (r + 1) * per_round]
        t = time.process_time()
        for vehicle, req in todo:
            for effect in core.handle_request(1, vehicle, req, now):
                if type(effect).__name__ == "Reply":
                    encode_reply(effect.type, effect.data, effect.request_id)
        best = min(best, (time.process_time() - t) / len(todo) * 1e6)
    return best


def compare(old_tree: Path, cases: list[str], rounds: int = COMPARE_ROUNDS) -> None:
    """``POINTS:KIND`` cases, old and new alternating, best of ``rounds`` runs of each."""
    new_tree = Path(__file__).resolve().parents[2]
    for case in cases:
        points, kind = case.split(":")
        us: dict[str, list[float]] = {"old": [], "new": []}
        for k in range(rounds):
            for name, tree in (("old", old_tree), ("new", new_tree))[:: 1 if k % 2 == 0 else -1]:
                out = subprocess.run(
                    [sys.executable, __file__, points, kind, "5"],
                    env={**os.environ, "PYTHONPATH": str(tree)},
                    cwd=tempfile.gettempdir(),
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                us[name].append(float(out))
        old, new = min(us["old"]), min(us["new"])
        print(
            f"= core + encoder, {kind} with {int(points):,} points: old {old:6.2f} us  "
            f"new {new:6.2f} us per request  (new/old {new / old:4.2f})",
            flush=True,
        )


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare(Path(sys.argv[2]), sys.argv[3:] or list(DEFAULT_CASES))
    else:
        print(f"{main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])):.2f}")
