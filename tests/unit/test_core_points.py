"""The single definition of ``estado``, faults and availability."""

from __future__ import annotations

from broker.core.points import PointState, derive_estado, is_available, is_faulted
from broker.core.queues import Reservation


def point(**kw: object) -> PointState:
    p = PointState(id="P", latitude=0.0, longitude=0.0, online=True)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def res(turn: bool) -> Reservation:
    r = Reservation("r", "V", "P", 0.0, 0.0, 1)
    if turn:
        r.turn_started_at, r.deadline = 0.0, 600.0
    return r


def test_estado_precedence() -> None:
    assert derive_estado(point(online=False, rep_estado="indisponivel")) == "offline"
    assert derive_estado(point(rep_estado="indisponivel")) == "indisponivel"
    assert derive_estado(point(rep_estado="carregando")) == "carregando"
    assert derive_estado(point(queue=[res(True)])) == "reservado"
    assert derive_estado(point(queue=[res(False)])) == "disponivel"
    assert derive_estado(point()) == "disponivel"


def test_fault_rules_for_the_original_minimal_form() -> None:
    assert is_faulted(point(rep_available=False))
    assert not is_faulted(point(rep_available=False, rep_vehicle="CAR1"))
    assert not is_faulted(point(rep_available=False, queue=[res(True)]))
    assert not is_faulted(point(rep_available=False, rep_estado="disponivel"))
    assert is_faulted(point(rep_estado="indisponivel", rep_available=True))


def test_available_needs_an_empty_queue() -> None:
    p = point(estado="disponivel")
    assert is_available(p)
    p.queue.append(res(False))
    assert not is_available(p)


def test_static_record_has_no_liveness() -> None:
    rec = point(potencia_kw=22.0).static_record()
    assert rec == {
        "id": "P",
        "latitude": 0.0,
        "longitude": 0.0,
        "potencia_kw": 22.0,
        "preco_kwh": 2.0,
        "interval_s": 2.0,
        "out_of_service": False,
        "reason": "",
        "by": "",
        "limites": False,
    }
