"""Every reply and push of one scripted run through the core, as the lines a vehicle reads.

``reply_samples.txt`` holds the lines the broker wrote for this run when replies
and pushes were still built as dicts: the typed payloads (:mod:`common.replies`)
must give the same bytes, so that no client sees a difference. Each line is
``<step> <reply line>`` or ``<step> push <vehicle> <push line>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from broker.core.effects import Effect, Push, Reply
from common.codec import encode_reply
from common.messages import Ping, Start, VehicleRequest
from tests.support.core_harness import Harness

EXPECTED: Final = Path(__file__).with_name("reply_samples.txt")


def lines(fx: list[Effect]) -> list[bytes]:
    """The reply and push lines of ``fx``, in order."""
    out = []
    for e in fx:
        if isinstance(e, Reply):
            out.append(encode_reply(e.type, e.data, e.request_id, truncated=e.truncated))
        elif isinstance(e, Push):
            out.append(b"push " + e.vehicle_id.encode() + b" " + encode_reply(e.type, e.data))
    return out


def run() -> list[bytes]:
    """The lines of the scripted run, each ending in a newline."""
    h = Harness(queue_capacity=2)
    res: list[bytes] = []

    def go(label: str, fx: list[Effect]) -> None:
        res.extend(label.encode() + b" " + line for line in lines(fx))

    h.point("CP01")
    h.point("CP02", lat=-12.27)
    go("ping", h.request("V1", "ping", rid=7))
    go("status-empty", h.request("V1", "status", rid="s"))
    go("custos-empty", h.request("V1", "custos"))
    go("reserva-turn", h.request("V1", "reserva", rid=1, id_ponto_recarga="CP01", tempo_estimado=5))
    go("reserva-queued", h.request("V2", "reserva", id_ponto_recarga="CP01", tempo_estimado=2.5))
    go("reserva-full", h.request("V3", "reserva", id_ponto_recarga="CP01"))
    go("reserva-again", h.request("V2", "reserva", id_ponto_recarga="CP01"))
    go("reserva-other", h.request("V2", "reserva", id_ponto_recarga="CP02"))
    go("reserva-unknown", h.request("V3", "reserva", id_ponto_recarga="NOPE"))
    go("status-res", h.request("V2", "status"))
    go("status-turn", h.request("V1", "status"))
    go("cancelar-none", h.request("V3", "cancelar", id_ponto_recarga="CP01"))
    go("chegada-early", h.arrive("V2"))
    go("chegada-invalid", h.arrive("V1", battery=90, target=80))
    fx = h.arrive("V1", metodo_pagamento="Cartão de crédito")
    go("chegada-pending", fx)
    (start,) = h.commands(fx, Start)
    go("status-starting", h.request("V1", "status"))
    h.at(1.5)
    go("ack", h.ack("CP01", start.cmd_id))
    go("status-session", h.request("V1", "status"))
    go("parar", h.request("V1", "parar", id_ponto_recarga="CP01"))
    go("parar-none", h.request("V2", "parar", id_ponto_recarga="CP02"))
    h.at(600.25)
    go("complete", h.complete("CP01", start.session_id, "V1", start=20, end=61.3333, energy=24.8))
    go("custos", h.request("V1", "custos", rid=None))
    go("cancelar", h.request("V2", "cancelar", id_ponto_recarga="CP01"))
    go("reserva2", h.request("V2", "reserva", id_ponto_recarga="CP02"))
    go("expire", h.tick(3600))
    go("reserva3", h.request("V3", "reserva", id_ponto_recarga="CP02"))
    go("grace", h.tick(3600))
    h.point("CP01")
    fx = h.arrive("V1", "CP01", battery=10, target=30)
    (start,) = h.commands(fx, Start)
    go("fail", h.ack("CP01", start.cmd_id, ok=False, error="busy"))
    h.point("CP02", lat=-12.27)
    go("reserva4", h.request("V3", "reserva", id_ponto_recarga="CP02"))
    go("oos", h.apply(h.core.set_availability("CP02", False, "maintenance", "op", h.now)[1]))
    go("status-oos", h.request("V3", "status"))
    go("unknown", h.apply(h.core.handle_request(1, "V1", VehicleRequest("nope", Ping(), 3), h.now)))
    go("mismatch", h.apply(h.core.handle_request(1, "V1", VehicleRequest("status", Ping()), h.now)))
    here = {"latitude": -12.265, "longitude": -38.965}
    go("bateria", h.request("V1", "bateria", rid=8, nivel_bateria=50, localizacao=here))
    go("consulta-oos", h.request("V1", "consulta", localizacao=here, limite=5))
    return res
