"""station.replica: replica numbers from compose container names, and the PTR question."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ConfigError
from station.replica import lookup_ptr, ptr_names, ptr_query, replica_from_name, replica_prefix


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("evtest1_fleet_2.evtest1_evnet", 2),  # Compose v1, as Docker's DNS answers it
        ("evtest1-fleet-13.evtest1_evnet.", 13),  # Compose v2
        ("ops_fleet_1", 1),
        ("3f2a9b1c7d8e", None),  # a container id: no replica number
        ("fleet_0", None),
        ("", None),
    ],
)
def test_replica_from_name(name: str, number: int | None) -> None:
    assert replica_from_name(name) == number


def test_replica_prefix() -> None:
    assert replica_prefix("FS", "none") == "FS"
    assert replica_prefix("FS", "3") == "FS3-"
    with pytest.raises(ConfigError, match="replica"):
        replica_prefix("FS", "zero")
    with pytest.raises(ConfigError, match="replica"):
        replica_prefix("FS", "0")


def _answer(query: bytes, name: str) -> bytes:
    """A DNS reply to ``query`` with one PTR record (name compressed against the question)."""
    header = struct.pack("!6H", struct.unpack_from("!H", query)[0], 0x8180, 1, 1, 0, 0)
    labels = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    answer = struct.pack("!HHHIH", 0xC00C, 12, 1, 600, len(labels)) + labels
    return header + query[12:] + answer


def test_ptr_query_asks_for_the_reverse_name() -> None:
    query = ptr_query("172.18.0.5")
    assert b"\x015\x010\x0218\x03172\x07in-addr\x04arpa\x00" in query
    assert ptr_names(_answer(query, "p_fleet_3.p_evnet")) == ["p_fleet_3.p_evnet"]


@given(st.binary(max_size=200))
def test_ptr_names_never_raises_on_garbage(data: bytes) -> None:
    assert isinstance(ptr_names(data), list)


@pytest.fixture
def dns_server() -> Iterator[int]:
    """A one-shot DNS server on a real UDP socket answering every PTR question."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def serve() -> None:
        data, peer = sock.recvfrom(4096)
        sock.sendto(_answer(data, "stack_fleet_4.stack_evnet"), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        thread.join(timeout=5)
        sock.close()


def test_lookup_ptr_over_udp(dns_server: int) -> None:
    names = lookup_ptr("10.0.0.7", "127.0.0.1", dns_server)
    assert [replica_from_name(n) for n in names] == [4]
