"""JSON Schemas of the wire messages, generated from the msgspec structs that define them.

    python -m common.schema docs/schema          # (re)write the checked-in schemas
    python -m common.schema --check docs/schema  # exit 1 when they drifted from the structs

One file per message, grouped by where it travels (docs/protocol.md):

* ``vehicle/<type>.schema.json``: each vehicle request, envelope included
  (``{"type", "data", "id"?}``), from :data:`common.messages.REQUEST_TYPES`;
* ``status/datagram.schema.json``: a station status datagram;
* ``station/<type>.schema.json``: each station <-> broker ZeroMQ message;
* ``bus/<topic>.schema.json``: each bus event payload ``{seq, ts, topic, data}``
  with the topic's data struct from :data:`common.events.EVENT_TYPES`;
* ``history/<op>.schema.json``: each history request;
* ``reply/<type>.schema.json``: each reply the broker writes on the vehicle
  connection, envelope included (``{"type", "data", "id"?, "truncated"?}``), its
  ``data`` one of the payloads :data:`common.replies.REPLY_DATA` lists for it;
  ``reply/envelope.schema.json``: any reply or push line, ``data`` left open;
* ``push/<type>.schema.json``: each push (``{"type", "data"}``, never an ``id``),
  from :data:`common.replies.PUSH_DATA`.

A reply or push field is required unless the struct leaves it out while unset
(``... | UnsetType``): the broker always writes the others, ``null`` included.

Messages carried as msgpack (station, bus, history) have the same map
structure as their JSON form; the schemas describe that structure. Unknown
fields are allowed everywhere (forward compatibility), as the structs allow them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, get_args

import msgspec
from msgspec import UNSET

from common import replies
from common.events import EVENT_TYPES
from common.messages import (
    REQUEST_TYPES,
    BrokerToStation,
    HistoryRequest,
    StationToBroker,
    StatusDatagram,
)

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
#: every station <-> broker message (both directions, each once)
STATION_MESSAGES: Final[tuple[Any, ...]] = tuple(
    dict.fromkeys((*get_args(StationToBroker), *get_args(BrokerToStation)))
)
HISTORY_REQUESTS: Final[tuple[Any, ...]] = get_args(HistoryRequest)
_ID: Final = {
    "description": "Any JSON scalar; echoed in the reply.",
    "type": ["string", "integer", "number", "boolean", "null"],
}
#: the outbound payload structs, by the name their schema definitions carry
_PAYLOADS: Final = {
    name: cls
    for name, cls in vars(replies).items()
    if isinstance(cls, type) and issubclass(cls, replies.Payload)
}


def _struct_schema(cls: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the struct's own schema, the other definitions it refers to)."""
    generated: dict[str, Any] = msgspec.json.schema(cls)
    defs: dict[str, Any] = dict(generated.get("$defs", {}))
    name = generated["$ref"].rsplit("/", 1)[-1]
    return defs.pop(name), defs


def _document(
    title: str, description: str, body: dict[str, Any], defs: Mapping[str, Any]
) -> dict[str, Any]:
    doc: dict[str, Any] = {"$schema": DIALECT, "title": title, "description": description}
    doc.update({k: v for k, v in body.items() if k != "title"})
    if defs:
        doc["$defs"] = dict(sorted(defs.items()))
    return doc


def _tag(cls: Any) -> str:
    return str(cls.__struct_config__.tag)


def _payload_schema(kinds: tuple[Any, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the schema of a ``data`` that is one of ``kinds``, the definitions it refers to).

    Every field of an outbound payload is required except those left out while unset.
    """
    refs, defs = [], {}
    for kind in kinds:
        generated: dict[str, Any] = msgspec.json.schema(kind)
        defs.update(generated.pop("$defs", {}))
        refs.append(generated)
    for name, body in defs.items():
        cls = _PAYLOADS.get(name)
        if cls is not None:
            fields = msgspec.structs.fields(cls)
            body["required"] = [f.encode_name for f in fields if f.default is not UNSET]
            if not body["required"]:
                del body["required"]
    return (refs[0] if len(refs) == 1 else {"anyOf": refs}), defs


def _envelope(type_: str, data: dict[str, Any], *, request_id: bool) -> dict[str, Any]:
    """``{"type": type_, "data": ..., "id"?: ...}``: a vehicle message of one type."""
    properties: dict[str, Any] = {"type": {"const": type_}, "data": data}
    if request_id:
        properties["id"] = _ID
    return {"type": "object", "properties": properties, "required": ["type", "data"]}


def schemas() -> dict[str, dict[str, Any]]:
    """Every schema, by its path under the schema folder."""
    out: dict[str, dict[str, Any]] = {}
    for type_, cls in sorted(REQUEST_TYPES.items()):
        data, defs = _struct_schema(cls)
        defs[cls.__name__] = data
        body = _envelope(type_, {"$ref": f"#/$defs/{cls.__name__}"}, request_id=True)
        if type_ == "ping":
            body["required"] = ["type"]
        out[f"vehicle/{type_}.schema.json"] = _document(
            f"vehicle request {type_}",
            "A request on the vehicle TCP connection (one JSON object).",
            body,
            defs,
        )
    data, defs = _struct_schema(StatusDatagram)
    out["status/datagram.schema.json"] = _document(
        "station status datagram", "One UDP datagram: one JSON object, at most 8 KiB.", data, defs
    )
    out.update(
        _tagged(
            "station",
            "station message",
            "One ZeroMQ frame between a station DEALER and the broker ROUTER (msgpack map).",
            STATION_MESSAGES,
        )
    )
    for topic, cls in sorted(EVENT_TYPES.items()):
        data, defs = _struct_schema(cls)
        defs[cls.__name__] = data
        body = {
            "type": "object",
            "properties": {
                "seq": {"type": "integer", "minimum": 1},
                "ts": {"type": "number", "description": "Epoch seconds."},
                "topic": {"const": topic},
                "data": {"$ref": f"#/$defs/{cls.__name__}"},
            },
            "required": ["seq", "ts", "topic", "data"],
        }
        out[f"bus/{topic}.schema.json"] = _document(
            f"bus event {topic}",
            "The payload frame of a bus message (msgpack map); the first frame is the topic.",
            body,
            defs,
        )
    out.update(
        _tagged(
            "history",
            "history request",
            "One msgpack frame to the history ROUTER.",
            HISTORY_REQUESTS,
        )
    )
    out.update(_outbound())
    return out


def _tagged(
    folder: str, what: str, description: str, classes: tuple[Any, ...]
) -> dict[str, dict[str, Any]]:
    """``<folder>/<tag>.schema.json`` for each tagged struct of ``classes``."""
    out = {}
    for cls in classes:
        data, defs = _struct_schema(cls)
        out[f"{folder}/{_tag(cls)}.schema.json"] = _document(
            f"{what} {_tag(cls)}", description, data, defs
        )
    return out


def _outbound() -> dict[str, dict[str, Any]]:
    """The schemas of what the broker writes on a vehicle connection."""
    out: dict[str, dict[str, Any]] = {}
    for type_, kinds in sorted(replies.REPLY_DATA.items()):
        data, defs = _payload_schema(kinds)
        body = _envelope(type_, data, request_id=True)
        if type_ == "lista_pontos":
            body["properties"]["truncated"] = {
                "const": True,
                "description": "Only when the list was cut at 100 points (no limite given).",
            }
        out[f"reply/{type_}.schema.json"] = _document(
            f"vehicle reply {type_}",
            "A reply on the vehicle TCP connection (one JSON line); id as the request's.",
            body,
            defs,
        )
    for type_, cls in sorted(replies.PUSH_DATA.items()):
        data, defs = _payload_schema((cls,))
        out[f"push/{type_}.schema.json"] = _document(
            f"vehicle push {type_}",
            "A message the broker sends on its own on the vehicle TCP connection (one JSON line).",
            _envelope(type_, data, request_id=False),
            defs,
        )
    types = sorted([*replies.REPLY_DATA, *replies.PUSH_DATA])
    body = _envelope("", {"description": "As the type's own schema says."}, request_id=True)
    body["properties"]["type"] = {"enum": types}
    body["properties"]["truncated"] = {"const": True}
    out["reply/envelope.schema.json"] = _document(
        "vehicle reply or push",
        "Any line the broker writes on the vehicle TCP connection; pushes never carry id.",
        body,
        {},
    )
    return out


def render(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def drift(folder: Path) -> list[str]:
    """Paths under ``folder`` that differ from the structs (missing, changed or extra)."""
    wanted = {path: render(schema) for path, schema in schemas().items()}
    problems = [
        path
        for path, text in wanted.items()
        if not (folder / path).is_file() or (folder / path).read_text() != text
    ]
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*.schema.json")}
    problems += sorted(present - set(wanted))
    return sorted(problems)


def write(folder: Path) -> int:
    wanted = schemas()
    for path, schema in wanted.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(schema))
    for extra in folder.rglob("*.schema.json"):
        if extra.relative_to(folder).as_posix() not in wanted:
            extra.unlink()
    return len(wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.schema", description=__doc__.split("\n")[0]
    )
    parser.add_argument("folder", type=Path, nargs="?", default=Path("docs/schema"))
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1)")
    args = parser.parse_args(argv)
    if args.check:
        problems = drift(args.folder)
        for path in problems:
            print(f"drifted: {args.folder / path}", file=sys.stderr)
        return 1 if problems else 0
    print(f"wrote {write(args.folder)} schemas to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
