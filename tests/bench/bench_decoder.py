"""Vehicle codec speed: decode + validate per request, stream throughput, reply encoding.

Each figure is the best of several short batches, timed in CPU time of this process
(single-threaded and CPU-bound, so equal to wall time on an idle machine, and far less
disturbed by other processes on a shared one).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from common.codec import DecodedRequest, StreamDecoder, decode_one, encode_reply
from common.messages import Envelope, Reserva

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
RUNS = 15  # short batches, best kept: the least disturbed by other processes


def best_seconds(fn: Callable[[], object], number: int, runs: int = RUNS) -> float:
    """Best CPU time of ``runs`` batches of ``number`` calls, per call."""
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, time.process_time() - started)
    return best / number


def report(label: str, seconds: float, unit: str = "op") -> None:
    print(f"{label:<56} {seconds * 1e6:8.3f} us/{unit}  {1 / seconds:>12,.0f} {unit}/s")


def per_request(label: str, raw: bytes) -> None:
    item = decode_one(raw)
    assert isinstance(item, DecodedRequest), item
    report(f"decode+validate {label} ({len(raw)} B)", best_seconds(lambda: decode_one(raw), 10_000))


def baseline() -> None:
    """msgspec alone on the reserva line (envelope, then data): the floor to compare with."""
    envelope, data = msgspec.json.Decoder(Envelope), msgspec.json.Decoder(Reserva)
    seconds = best_seconds(lambda: data.decode(envelope.decode(RESERVA).data), 10_000)
    report("reference: bare msgspec Envelope + Reserva, reserva", seconds)


def stream(label: str, data: bytes, count: int, chunk: int) -> None:
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]

    def feed_all() -> None:
        decoder = StreamDecoder()
        got = 0
        for piece in chunks:
            got += len(decoder.feed(piece))
        assert got == count, got

    seconds = best_seconds(feed_all, 1) / count
    mb_s = len(data) / count / seconds / 1e6
    report(f"{label} ({chunk} B reads)", seconds, "req")
    print(f"{'':<56} {mb_s:8.1f} MB/s")


def go_client_writes(count: int) -> None:
    """One ``feed`` per request, no newline: the original client's writes."""

    def feed_each() -> None:
        decoder = StreamDecoder()
        for _ in range(count):
            decoder.feed(RESERVA)

    report("stream, one write per request, no newline", best_seconds(feed_each, 1) / count, "req")


def slow_sender() -> None:
    """A 64 KiB object arriving one byte per read, up to its too_large."""
    payload = b'{"type":"ping","pad":"' + b'\\"{' * 22_000

    def trickle() -> None:
        decoder = StreamDecoder()
        for i in range(len(payload)):
            if decoder.feed(payload[i : i + 1]):
                break
        assert decoder.closed

    seconds = best_seconds(trickle, 1, runs=3)
    print(f"{'slow sender: 64 KiB object, 1 byte per read, total':<56} {seconds * 1e3:8.1f} ms")


def main() -> None:
    baseline()
    per_request("reserva", RESERVA)
    per_request("reserva with id", RESERVA_WITH_ID)
    per_request("bateria", BATERIA)
    per_request("chegada, original client line", CHEGADA)
    count = 8_000
    mixed = [RESERVA, BATERIA, CHEGADA, RESERVA_WITH_ID]
    requests = [mixed[i % len(mixed)] for i in range(count)]
    ndjson = b"\n".join(requests) + b"\n"
    stream("stream, newline-delimited", ndjson, count, 65536)
    stream("stream, newline-delimited", ndjson, count, 4096)
    stream("stream, back to back", b"".join(requests), count, 65536)
    stream("stream, back to back", b"".join(requests), count, 4096)
    go_client_writes(count)
    slow_sender()
    report(
        "encode_reply reserva_response",
        best_seconds(lambda: encode_reply("reserva_response", RESPONSE, 42), 20_000),
    )


if __name__ == "__main__":
    main()
