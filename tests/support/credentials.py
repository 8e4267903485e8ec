"""Credentials for brokers started by tests (the broker runs with auth on, as in production).

:func:`tests.support.procs.start_broker` calls :func:`provision` for every
broker it starts without ``--insecure``, stores the result on the
``BrokerPorts`` (``ports.creds``) and registers it under the broker's ports,
so the raw clients find it by port (:func:`for_port`). Use:

* ``ports.creds.station`` / ``.consumer`` / ``.operator`` / ``.legacy``: paths
  of ``.cred`` files (``station``: role station, points ``*``; ``legacy``:
  legacy-station for ``*`` from 127.0.0.1, so unsigned datagrams sent from
  this machine are accepted), e.g. ``["--credentials", str(ports.creds.consumer)]``
  for ``ev-broker billing|tail|monitor`` or ``ev-station run|fleet``;
* ``ports.creds.add(name, role, points=None, source=None)``: issue another
  credential (a path), ``ports.creds.revoke(name)``, ``ports.creds.load(path)``
  (a :class:`common.credentials.Credential`);
* :func:`curve_client_for` to make a raw zmq socket a client of the broker on
  a port (``role``: ``consumer`` by default, ``station`` for a DEALER).

``provision`` is idempotent: a broker restarted on the same database and keys
folder keeps its credentials (the ``.cred`` files are reused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.credentials import (
    CredentialTable,
    broker_keys,
    credentials_db_for,
    ensure,
    issue,
)
from common.credentials import Credential, curve_client, load_credential

#: name -> (role, points, source) of the credentials every test broker gets.
STANDARD: dict[str, tuple[str, str | None, str | None]] = {
    "test-station": ("station", "*", None),
    "test-consumer": ("consumer", None, None),
    "test-operator": ("operator", None, None),
    "test-legacy": ("legacy-station", "*", "127.0.0.1"),
}


@dataclass
class TestCredentials:
    """The credentials of one test broker (database ``db``, keys folder ``keys``)."""

    __test__ = False  # not a test class, whatever its name

    db: str
    keys: Path
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        """Where the .cred files go: one folder per database (brokers may share ``keys``)."""
        name = "memory" if self.db == ":memory:" else Path(self.db).name
        return self.keys / f"{name}.creds"

    @property
    def station(self) -> Path:
        return self.paths["test-station"]

    @property
    def consumer(self) -> Path:
        return self.paths["test-consumer"]

    @property
    def operator(self) -> Path:
        return self.paths["test-operator"]

    @property
    def legacy(self) -> Path:
        """legacy-station for ``*`` from 127.0.0.1 (absent with ``standard_legacy=False``)."""
        return self.paths["test-legacy"]

    def load(self, path_or_name: Path | str) -> Credential:
        """The credential of a ``.cred`` path, or of a name issued here."""
        path = self.paths.get(str(path_or_name), Path(path_or_name))
        return load_credential(path)

    def add(
        self, name: str, role: str, points: str | None = None, source: str | None = None
    ) -> Path:
        """Issue a credential now (the running broker takes it within 2 s); its .cred path."""
        with CredentialTable(credentials_db_for(self.db, self.keys)) as table:
            path = issue(table, broker_keys(self.keys), name, role, points, source, self.out)
        self.paths[name] = path
        return path

    def revoke(self, name: str) -> None:
        with CredentialTable(credentials_db_for(self.db, self.keys)) as table:
            assert table.revoke(name), f"no live credential {name!r}"


def provision(db: str, keys: Path, legacy: bool = True) -> TestCredentials:
    """Credentials for a broker on ``db`` with keys in ``keys`` (made or reused).

    ``legacy=False``: without ``test-legacy`` (revoked if it was issued before).
    """
    creds = TestCredentials(db, keys)
    with CredentialTable(credentials_db_for(db, keys)) as table:
        live = {r.name for r in table.records() if r.live}
        if not legacy and "test-legacy" in live:
            table.revoke("test-legacy")
    with CredentialTable(credentials_db_for(db, keys)) as table:
        for name, (role, points, source) in STANDARD.items():
            if name == "test-legacy" and not legacy:
                continue
            # ensure, not issue: a database copied from another broker (a backup
            # restored) holds these names live while this folder has no .cred yet.
            ensure(table, broker_keys(keys), name, role, points, source, creds.out)
            creds.paths[name] = creds.out / f"{name}.cred"
    return creds


_BY_PORT: dict[int, TestCredentials] = {}


def register(creds: TestCredentials, *ports: int) -> None:
    for port in ports:
        _BY_PORT[port] = creds


def unregister(*ports: int) -> None:
    for port in ports:
        _BY_PORT.pop(port, None)


def for_port(port: int) -> TestCredentials | None:
    """The credentials of the test broker listening on ``port`` (None: insecure or unknown)."""
    return _BY_PORT.get(port)


def curve_client_for(sock: Any, port: int, role: str = "consumer") -> None:
    """Make ``sock`` a CURVE client of the test broker on ``port`` with a ``role`` credential."""
    creds = for_port(port)
    if creds is None:
        return
    path = {"consumer": creds.consumer, "operator": creds.operator, "station": creds.station}[role]
    curve_client(sock, creds.load(path))
