"""Vehicle codec speed: decode + validate per request, stream throughput, reply encoding.

Each figure is the best of several runs (the least disturbed by other processes).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from common.codec import DecodedRequest, StreamDecoder, decode_one, encode_reply

RESERVA = (
    b'{"type":"reserva","data":{"id_veiculo":"CAR40312","id_ponto_recarga":"CP01",'
    b'"tempo_estimado":10,"timestamp":"2025-04-07T10:00:09"}}'
)
BATERIA = (
    b'{"type":"bateria","data":{"id_veiculo":"CAR40312","nivel_bateria":15,"localizacao":'
    b'{"latitude":-12.266,"longitude":-38.966},"timestamp":"2025-04-07T10:00:00"}}'
)
CHEGADA = (
    '{"type":"chegada","data":{"id_veiculo":"CAR40312","id_ponto_recarga":"CP01",'
    '"nivel_bateria":20,"nivel_carregar":80,"metodo_pagamento":"Débito em conta",'
    '"timestamp":"2025-04-07T10:20:00"}}'
).encode()
RESERVA_WITH_ID = RESERVA[:-1] + b',"id":42}'
RESPONSE = {
    "status": "success",
    "code": "reserved",
    "message": "Reserve confirmed",
    "vehicle_id": "CAR40312",
    "id_ponto_recarga": "CP01",
    "reservation_id": "res-0123456789ab",
    "posicao": 1,
    "expira_em": "2025-04-07T10:10:09.000Z",
}
RUNS = 5


def best_seconds(fn: Callable[[], object], number: int, runs: int = RUNS) -> float:
    """Best wall time of ``runs`` batches of ``number`` calls, per call."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / number


def report(label: str, seconds: float, unit: str = "op") -> None:
    print(f"{label:<52} {seconds * 1e6:8.3f} us/{unit}  {1 / seconds:>12,.0f} {unit}/s")


def per_request(label: str, raw: bytes) -> None:
    item = decode_one(raw)
    assert isinstance(item, DecodedRequest), item
    report(f"decode+validate {label} ({len(raw)} B)", best_seconds(lambda: decode_one(raw), 50_000))


def stream(label: str, data: bytes, count: int, chunk: int) -> None:
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]

    def feed_all() -> None:
        decoder = StreamDecoder()
        got = 0
        for piece in chunks:
            got += len(decoder.feed(piece))
        assert got == count, got

    seconds = best_seconds(feed_all, 3) / count
    mb_s = len(data) / count / seconds / 1e6
    report(f"{label} ({chunk} B reads)", seconds, "req")
    print(f"{'':<52} {mb_s:8.1f} MB/s")


def go_client_writes(count: int) -> None:
    """One ``feed`` per request, no newline: the original client's writes."""

    def feed_each() -> None:
        decoder = StreamDecoder()
        for _ in range(count):
            decoder.feed(RESERVA)

    report("stream, one write per request, no newline", best_seconds(feed_each, 3) / count, "req")


def main() -> None:
    per_request("reserva", RESERVA)
    per_request("reserva with id", RESERVA_WITH_ID)
    per_request("bateria", BATERIA)
    per_request("chegada, original client line", CHEGADA)
    count = 20_000
    mixed = [RESERVA, BATERIA, CHEGADA, RESERVA_WITH_ID]
    requests = [mixed[i % len(mixed)] for i in range(count)]
    ndjson = b"\n".join(requests) + b"\n"
    stream("stream, newline-delimited", ndjson, count, 65536)
    stream("stream, newline-delimited", ndjson, count, 4096)
    stream("stream, back to back", b"".join(requests), count, 65536)
    stream("stream, back to back", b"".join(requests), count, 4096)
    go_client_writes(count)
    report(
        "encode_reply reserva_response",
        best_seconds(lambda: encode_reply("reserva_response", RESPONSE, 42), 100_000),
    )


if __name__ == "__main__":
    main()
