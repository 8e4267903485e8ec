"""Real NATS (JetStream) and PostgreSQL servers for tests, in a temp folder on free ports.

Both are the Debian packages' binaries, started as child processes and
stopped by their pid. PostgreSQL refuses to run as root: when the tests run
as root (CI), initdb and postgres run as the ``postgres`` system user (created
when missing) through ``subprocess.Popen(user=...)``, which starts the binary
itself, so the pid we keep is the server's own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.procs import Proc, free_port

PG_USER = "postgres"


def nats_binary() -> str | None:
    return shutil.which("nats-server") or next(iter(glob.glob("/usr/sbin/nats-server")), None)


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def need_servers() -> None:
    """Skip (fail in CI) when the Debian packages are not installed."""
    missing = [
        n for n, ok in (("nats-server", nats_binary()), ("postgresql", pg_bindir())) if not ok
    ]
    if missing:
        msg = f"install the Debian packages {' '.join(missing)} (.ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def _popen(args: list[str], user: str | None = None) -> Proc:
    popen = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        user=user,
        group=user and pwd.getpwnam(user).pw_gid,
        extra_groups=[] if user else None,
        cwd="/",
    )
    return Proc(list(args), popen)


# --- NATS -------------------------------------------------------------------------


@dataclass
class NatsServer:
    """``nats-server -js`` on a fixed port and store folder; restartable."""

    folder: Path
    port: int
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = nats_binary()
        assert binary, "nats-server is not installed"
        self.proc = _popen(
            [
                binary,
                "-js",
                "-sd",
                str(self.folder / "js"),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-n",
                "evcharge-test",
            ]
        )
        self.proc.read_until("Server is ready", timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=15)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def nats_server() -> Iterator[NatsServer]:
    folder = Path(tempfile.mkdtemp(prefix="evcharge-nats-"))
    server = NatsServer(folder, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


# --- PostgreSQL ---------------------------------------------------------------------


def _pg_user() -> str | None:
    """The user to run PostgreSQL as: ourselves, or ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
        )
    return PG_USER


@dataclass
class Postgres:
    folder: Path
    port: int
    proc: Proc | None = None
    argv: list[str] | None = None  # how the server was started (to start it again)
    user: str | None = None

    def stop_server(self) -> None:
        """Stop the server (by its pid); its data stays for :meth:`start_server`."""
        if self.proc is not None:
            self.proc.stop(timeout=20)
            self.proc = None

    def start_server(self) -> None:
        assert self.argv is not None and self.proc is None
        self.proc = _popen(self.argv, self.user)
        self.proc.read_until("ready to accept connections", timeout=60)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            # (ignored below) psycopg wants a LiteralString; the database name is generated here
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url(name)


@contextlib.contextmanager
def postgres(fsync: bool = False) -> Iterator[Postgres]:
    """An initdb'd cluster in a temp folder (trust auth on 127.0.0.1), stopped by pid."""
    bindir = pg_bindir()
    assert bindir is not None, "postgresql is not installed"
    user = _pg_user()
    folder = Path(tempfile.mkdtemp(prefix="evcharge-pg-"))
    data, sock = folder / "data", folder / "run"
    sock.mkdir()
    if user:
        ids = pwd.getpwnam(user)
        for p in (folder, sock):
            os.chown(p, ids.pw_uid, ids.pw_gid)
    server = Postgres(folder, free_port())
    try:
        init = _popen(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            user,
        )  # fmt: skip
        rc = init.popen.wait(timeout=120)
        assert rc == 0, f"initdb failed:\n{init.drain()}"
        init.stop()
        server.argv = [
            str(bindir / "postgres"), "-D", str(data), "-p", str(server.port),
            "-k", str(sock), "-c", "listen_addresses=127.0.0.1",
            "-c", f"fsync={'on' if fsync else 'off'}", "-c", "max_connections=50",
        ]  # fmt: skip
        server.user = user
        server.start_server()
        yield server
    finally:
        if server.proc is not None:
            server.proc.stop(timeout=20)
        shutil.rmtree(folder, ignore_errors=True)
