"""CPU cost of one request through the broker's core and reply encoder, no sockets.

Run as a script with the tree to measure first on ``PYTHONPATH`` (so an older
checkout can be measured with the same script):
``PYTHONPATH=TREE python tests/bench/core_cost.py POINTS KIND ROUNDS``. Prints
the best per-request microseconds of process CPU time over ROUNDS rounds. Only
wire-level names are used (decode_datagram, decode_request, Core.handle_request,
encode_reply), which every version of the broker has.
"""

from __future__ import annotations

import json
import random
import sys
import time

from broker.core import Core, CoreConfig
from common.codec import decode_datagram, decode_request, encode_reply

CENTER = (-12.97, -38.50)


def main(points: int, kind: str, rounds: int) -> float:
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
    requests = []
    for _ in range(97):
        lat, lon = CENTER[0] + rng.uniform(-0.5, 0.5), CENTER[1] + rng.uniform(-0.5, 0.5)
        data = {"id_veiculo": "CAR1", "nivel_bateria": 15}
        data["localizacao"] = {"latitude": lat, "longitude": lon}  # type: ignore[assignment]
        if kind == "ping":
            data = {"id_veiculo": "CAR1"}
        requests.append(json.dumps({"type": kind, "data": data}).encode())
    decoded = [decode_request(r) for r in requests]
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        n = 0
        for _ in range(10):
            for req in decoded:
                for effect in core.handle_request(1, "CAR1", req, now):
                    if type(effect).__name__ == "Reply":
                        encode_reply(effect.type, effect.data, effect.request_id)  # type: ignore[attr-defined]
                n += 1
        best = min(best, (time.process_time() - t) / n * 1e6)
    return best


if __name__ == "__main__":
    print(f"{main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])):.2f}")
