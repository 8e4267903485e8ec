"""The original client's requests, byte for byte, and functions shared by the codec tests."""

from __future__ import annotations

from typing import Any

from common.codec import DecodedRequest, DecodeFailure, StreamDecoder, decode_one
from common.messages import Bateria, Chegada, Consulta, Location, Reserva, VehicleRequest

# The original Go client, byte for byte (compact, no newline, UTF-8 unescaped).
ORIGINAL = [
    '{"type":"bateria","data":{"id_veiculo":"CAR40312","nivel_bateria":15,"localizacao":'
    '{"latitude":-12.266,"longitude":-38.966},"timestamp":"2025-04-07T10:00:00"}}',
    '{"type":"consulta","data":{"id_veiculo":"CAR40312","localizacao":{"latitude":-12.266,'
    '"longitude":-38.966},"timestamp":"2025-04-07T10:00:05"}}',
    '{"type":"reserva","data":{"id_veiculo":"CAR40312","id_ponto_recarga":"CP01",'
    '"tempo_estimado":10,"timestamp":"2025-04-07T10:00:09"}}',
    '{"type":"chegada","data":{"id_veiculo":"CAR40312","id_ponto_recarga":"CP01",'
    '"nivel_bateria":20,"nivel_carregar":80,"metodo_pagamento":"Débito em conta",'
    '"timestamp":"2025-04-07T10:20:00"}}',
]
ORIGINAL_BYTES = [line.encode() for line in ORIGINAL]
HERE = Location(latitude=-12.266, longitude=-38.966)
EXPECTED = [
    VehicleRequest(
        "bateria",
        Bateria(
            id_veiculo="CAR40312",
            nivel_bateria=15.0,
            localizacao=HERE,
            timestamp="2025-04-07T10:00:00",
        ),
    ),
    VehicleRequest(
        "consulta",
        Consulta(id_veiculo="CAR40312", localizacao=HERE, timestamp="2025-04-07T10:00:05"),
    ),
    VehicleRequest(
        "reserva",
        Reserva(
            id_veiculo="CAR40312",
            id_ponto_recarga="CP01",
            tempo_estimado=10.0,
            timestamp="2025-04-07T10:00:09",
        ),
    ),
    VehicleRequest(
        "chegada",
        Chegada(
            id_veiculo="CAR40312",
            id_ponto_recarga="CP01",
            nivel_bateria=20.0,
            nivel_carregar=80.0,
            metodo_pagamento="Débito em conta",
            timestamp="2025-04-07T10:20:00",
        ),
    ),
]


def requests_of(items: list[DecodedRequest | DecodeFailure]) -> list[VehicleRequest]:
    assert all(isinstance(item, DecodedRequest) for item in items), items
    return [item.request for item in items if isinstance(item, DecodedRequest)]


def summary(items: list[DecodedRequest | DecodeFailure]) -> list[Any]:
    """Items in a comparable form (exceptions compare by identity)."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, DecodedRequest):
            out.append(item.request)
        else:
            err = item.error
            out.append((type(err), err.message, err.field, item.request_id, item.close))
    return out


def feed_chunks(chunks: list[bytes], decoder: StreamDecoder | None = None) -> list[Any]:
    decoder = decoder or StreamDecoder()
    items: list[DecodedRequest | DecodeFailure] = []
    for chunk in chunks:
        items.extend(decoder.feed(chunk))
    return items


def failure(raw: bytes) -> DecodeFailure:
    item = decode_one(raw)
    assert isinstance(item, DecodeFailure), item
    return item
