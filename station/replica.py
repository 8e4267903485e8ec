"""Which replica of a scaled compose service this process runs in.

``docker-compose up --scale fleet=3`` starts three containers of one service,
named ``<project>_fleet_1`` .. ``_3`` (Compose v1) or ``<project>-fleet-1`` ..
(Compose v2). The number at the end is unique within the service and kept
across restarts of the container, so a fleet derives its station ids from it
(``--prefix FS --replica auto`` gives FS1-0001.., FS2-0001..).

Inside a container the name is not in the environment; Docker's DNS server
(the ``nameserver`` of /etc/resolv.conf) answers the reverse (PTR) lookup of
the container's own address with it (``<project>_fleet_2.<project>_evnet``).
The system resolver would answer from /etc/hosts (the container id) instead,
so the PTR question is asked directly. :func:`replica_from_name`,
:func:`ptr_query` and :func:`ptr_names` are pure; :func:`container_replica`
does the lookups.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from pathlib import Path
from typing import Final

from common.errors import ConfigError

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*?[_-](\d{1,6})$")


def replica_from_name(name: str) -> int | None:
    """The replica number of a compose container name (FQDN allowed), or None."""
    first = name.strip().rstrip(".").split(".", 1)[0]
    match = _NAME_RE.match(first)
    if match is None:
        return None
    number = int(match.group(1))
    return number if number >= 1 else None


DNS_TIMEOUT_S: Final = 2.0
_PTR: Final = 12


def ptr_query(address: str, query_id: int = 0x4543) -> bytes:
    """A DNS question (RFC 1035) for the PTR record of an IPv4/IPv6 ``address``."""
    labels = ipaddress.ip_address(address).reverse_pointer.split(".")
    qname = b"".join(bytes([len(x)]) + x.encode("ascii") for x in labels) + b"\0"
    return struct.pack("!6H", query_id, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!2H", _PTR, 1)


def _read_name(msg: bytes, pos: int, depth: int = 0) -> tuple[str, int]:
    """The (possibly compressed) domain name at ``pos`` and the offset after it."""
    labels: list[str] = []
    while True:
        if pos >= len(msg) or depth > 16:
            raise ValueError("truncated or looping DNS name")
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            pointer = struct.unpack_from("!H", msg, pos)[0] & 0x3FFF
            rest, _ = _read_name(msg, pointer, depth + 1)
            labels.append(rest)
            return ".".join(x for x in labels if x), pos + 2
        pos += 1
        if length == 0:
            return ".".join(labels), pos
        labels.append(msg[pos : pos + length].decode("ascii", "replace"))
        pos += length


def ptr_names(reply: bytes) -> list[str]:
    """The PTR names in a DNS reply (empty for an error or no answer)."""
    try:
        _, flags, qdcount, ancount, _, _ = struct.unpack_from("!6H", reply, 0)
        if flags & 0x000F:  # RCODE: NXDOMAIN, SERVFAIL...
            return []
        pos = 12
        for _ in range(qdcount):
            _, pos = _read_name(reply, pos)
            pos += 4
        names: list[str] = []
        for _ in range(ancount):
            _, pos = _read_name(reply, pos)
            rtype, _, _, rdlength = struct.unpack_from("!2HIH", reply, pos)
            pos += 10
            if rtype == _PTR:
                names.append(_read_name(reply, pos)[0])
            pos += rdlength
        return names
    except (struct.error, ValueError):
        return []


def _nameserver(resolv_conf: Path = Path("/etc/resolv.conf")) -> str:
    for line in resolv_conf.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            return parts[1]
    raise OSError("no nameserver in /etc/resolv.conf")


def lookup_ptr(address: str, server: str, port: int = 53) -> list[str]:
    """Ask ``server`` for the PTR names of ``address`` (one UDP question)."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(DNS_TIMEOUT_S)
        sock.sendto(ptr_query(address), (server, port))
        reply, _ = sock.recvfrom(4096)
    return ptr_names(reply)


def container_replica() -> int:
    """This container's replica number, from the reverse DNS name of its own address."""
    try:
        address = socket.gethostbyname(socket.gethostname())
        names = lookup_ptr(address, _nameserver())
    except OSError as exc:
        raise ConfigError(
            f"cannot find this container's name for --replica auto ({exc}); "
            "give a number or none outside compose"
        ) from None
    for name in names:
        number = replica_from_name(name)
        if number is not None:
            return number
    raise ConfigError(
        "--replica auto needs a compose container name (<project>_<service>_<n>), "
        f"found {names or 'none'}; give a number or none outside compose"
    )


def replica_prefix(prefix: str, replica: str) -> str:
    """The id prefix of a fleet: ``prefix`` alone, or ``PREFIX<n>-`` for replica ``n``.

    ``replica`` is ``none`` (no replica part), ``auto`` (this container's replica
    number) or a number >= 1.
    """
    choice = replica.strip().lower()
    if choice in ("", "none"):
        return prefix
    if choice == "auto":
        return f"{prefix}{container_replica()}-"
    if choice.isdigit() and int(choice) >= 1:
        return f"{prefix}{int(choice)}-"
    raise ConfigError(f"invalid replica {replica!r}: none, auto or a number >= 1")
