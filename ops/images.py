"""Build the evcharge image, tagged by a hash of its inputs, and reuse it when it exists.

    python -m ops.images build [--base auto|local|IMAGE] [--latest/--no-latest]
    python -m ops.images build-prometheus [--base auto|local|IMAGE]

prints the image reference (``evcharge:<hash>``, ``evcharge-prometheus:<hash>``)
on stdout, progress on stderr.
    python -m ops.images build-servers [--base auto|local|IMAGE]

``build`` prints the image reference (``evcharge:<hash>``) on stdout, progress
on stderr. ``build-servers`` builds the NATS and PostgreSQL images of the
``regions`` compose profile (``evcharge-nats:<hash>``, ``evcharge-postgres:<hash>``)
from Debian's packages on the same base choice (``auto`` takes the public
``debian:bookworm-slim`` when a registry answers) and prints
``EV_NATS_IMAGE=...`` and ``EV_POSTGRES_IMAGE=...`` lines.

Base image (``--base`` or ``EV_BASE_IMAGE``):

* ``auto`` (default): ``python:3.11-slim`` when it is present or can be pulled;
  otherwise (no registry reachable) a base built here from Debian packages by
  ``ops/build-base-image.sh``. With ``CI=true`` or ``EV_LOCAL_BASE=1`` the local
  base is used directly, without trying the registry.
* ``local``: always the Debian-built base.
* anything else: that image reference, used as it is.

The wheels (project + dependencies) are fetched on the host by
``ops/fetch-wheels.sh`` and the image installs them with ``--no-index``, so the
build itself never needs the network. The tag is a hash of the Dockerfile, the
container scripts, the packaging files, every package source file and the base
image id: an unchanged tree never rebuilds.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "ops"
BUILD_DIR = OPS / "build"
REGISTRY_BASE = "python:3.11-slim"
REGISTRY_DEBIAN = "debian:bookworm-slim"  # base of the server images on an ordinary machine
SERVERS_DIR = OPS / "servers"
SERVER_IMAGES = {  # compose variable -> (image repository, Dockerfile in ops/servers)
    "EV_NATS_IMAGE": ("evcharge-nats", "nats.Dockerfile"),
    "EV_POSTGRES_IMAGE": ("evcharge-postgres", "postgres.Dockerfile"),
}
IMAGE_REPO = "evcharge"
PACKAGES = ("common", "broker", "station", "vehicle")
IMAGE_FILES = (
    "ops/Dockerfile",
    "ops/entrypoint.sh",
    "ops/healthcheck.py",
    "ops/regions.toml",
    ".dockerignore",
    "pyproject.toml",
    "constraints.txt",
    "README.md",
)
PULL_TIMEOUT_S = 120.0
KEEP_IMAGES = 3  # newest evcharge:<hash> images kept; older ones are removed after a build


class ImageBuildError(RuntimeError):
    """A docker or script step of the image build failed."""


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def _run(args: list[str], timeout: float | None = None, capture: bool = True) -> str:
    """Run ``args``; return stdout; raise ImageBuildError with its stderr on failure."""
    try:
        proc = subprocess.run(
            args,
            cwd=ROOT,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageBuildError(f"{' '.join(args[:3])}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-25:])
        raise ImageBuildError(f"{' '.join(args[:3])} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout or ""


def docker_available() -> bool:
    """True when a Docker engine answers."""
    try:
        _run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=20)
    except ImageBuildError:
        return False
    return True


def image_id(ref: str) -> str | None:
    """The image id of ``ref``, or None when it is not present locally."""
    try:
        return _run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], timeout=30).strip()
    except ImageBuildError:
        return None


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """Serialise builds on this machine (they share ops/build and image tags)."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with (BUILD_DIR / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def source_files() -> list[Path]:
    """Every file that goes into the image, in a stable order."""
    files = [ROOT / f for f in IMAGE_FILES if (ROOT / f).is_file()]
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append(path)
    return files


def inputs_hash(base_id: str) -> str:
    """A short hash of every input of the image build, including the base image id."""
    h = hashlib.sha256(base_id.encode())
    for path in source_files():
        h.update(b"\0" + str(path.relative_to(ROOT)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def local_base() -> str:
    """The Debian-built base image (built once, then reused by its tag)."""
    out = _run(["bash", str(OPS / "build-base-image.sh")], capture=True)
    ref = out.strip().splitlines()[-1]
    log(f"local base {ref}")
    return ref


def choose_base(mode: str, registry_base: str = REGISTRY_BASE) -> str:
    """Resolve ``auto`` / ``local`` / an image reference to a present base image."""
    if mode == "local":
        return local_base()
    if mode != "auto":
        if image_id(mode) is None:
            log(f"pulling {mode}")
            _run(["docker", "pull", mode], timeout=PULL_TIMEOUT_S)
        return mode
    if os.environ.get("CI", "").lower() == "true" or os.environ.get("EV_LOCAL_BASE") == "1":
        return local_base()
    if image_id(registry_base) is not None:
        return registry_base
    try:
        log(f"trying to pull {registry_base}")
        _run(["docker", "pull", registry_base], timeout=PULL_TIMEOUT_S)
        return registry_base
    except ImageBuildError as exc:
        log(f"no registry ({exc.args[0].splitlines()[-1]}); building a local base")
        return local_base()


def build(base_mode: str = "auto", tag_latest: bool = True) -> str:
    """Build (or reuse) the image and return its reference ``evcharge:<hash>``."""
    with build_lock():
        base = choose_base(base_mode)
        base_id = image_id(base)
        if base_id is None:
            raise ImageBuildError(f"base image {base} is not present")
        ref = f"{IMAGE_REPO}:{inputs_hash(base_id)}"
        if image_id(ref) is not None:
            log(f"{ref} is up to date")
        else:
            log("fetching wheels")
            _run(["bash", str(OPS / "fetch-wheels.sh"), str(BUILD_DIR / "wheels")])
            log(f"building {ref} on {base}")
            _run(
                [
                    "docker", "build", "--quiet",
                    "--file", str(OPS / "Dockerfile"),
                    "--build-arg", f"BASE_IMAGE={base}",
                    "--build-arg", "WHEELS=local",
                    "--tag", ref,
                    str(ROOT),
                ],
            )  # fmt: skip
            prune(keep=ref)
        if tag_latest:
            _run(["docker", "tag", ref, f"{IMAGE_REPO}:latest"])
        return ref


PROMETHEUS_DIR = OPS / "prometheus"
PROMETHEUS_REPO = "evcharge-prometheus"
PROMETHEUS_PUBLIC_BASE = "debian:bookworm-slim"


def build_prometheus(base_mode: str = "auto", tag_latest: bool = True) -> str:
    """Build (or reuse) the Prometheus image of the ``observability`` profile.

    Debian's ``prometheus`` package on a Debian base: ``debian:bookworm-slim``
    where a registry is reachable, else the local Debian-built base (``auto``),
    or the base named by ``base_mode``. Returns ``evcharge-prometheus:<hash>``.
    """
    with build_lock():
        if base_mode == "auto":
            local = os.environ.get("CI", "").lower() == "true" or (
                os.environ.get("EV_LOCAL_BASE") == "1"
            )
            base = local_base() if local else PROMETHEUS_PUBLIC_BASE
            if not local and image_id(base) is None:
                try:
                    _run(["docker", "pull", base], timeout=PULL_TIMEOUT_S)
                except ImageBuildError:
                    base = local_base()
        else:
            base = choose_base(base_mode)
        base_id = image_id(base)
        if base_id is None:
            raise ImageBuildError(f"base image {base} is not present")
        h = hashlib.sha256(base_id.encode())
        for path in sorted(PROMETHEUS_DIR.iterdir()):
            if path.is_file():
                h.update(path.name.encode() + b"\0" + path.read_bytes())
        ref = f"{PROMETHEUS_REPO}:{h.hexdigest()[:12]}"
        if image_id(ref) is None:
            log(f"building {ref} on {base} (Debian's prometheus package)")
            _run(
                [
                    "docker", "build", "--quiet",
                    "--build-arg", f"BASE_IMAGE={base}",
                    "--tag", ref,
                    str(PROMETHEUS_DIR),
                ],
            )  # fmt: skip
        else:
            log(f"{ref} is up to date")
        if tag_latest:
            _run(["docker", "tag", ref, f"{PROMETHEUS_REPO}:latest"])
        return ref


def build_servers(base_mode: str = "auto") -> dict[str, str]:
    """Build (or reuse) the NATS and PostgreSQL images; {compose variable: reference}.

    Each is tagged by a hash of its Dockerfile, the files beside it and the base
    image id, and also tagged ``latest`` (the compose file's default).
    """
    refs: dict[str, str] = {}
    with build_lock():
        base = choose_base(base_mode, REGISTRY_DEBIAN)
        base_id = image_id(base)
        if base_id is None:
            raise ImageBuildError(f"base image {base} is not present")
        for var, (repo, dockerfile) in SERVER_IMAGES.items():
            h = hashlib.sha256(f"{base_id}\0{dockerfile}".encode())
            for path in sorted(SERVERS_DIR.iterdir()):
                if path.is_file():
                    h.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
            ref = f"{repo}:{h.hexdigest()[:12]}"
            if image_id(ref) is not None:
                log(f"{ref} is up to date")
            else:
                log(f"building {ref} on {base}")
                _run(
                    [
                        "docker", "build", "--quiet",
                        "--file", str(SERVERS_DIR / dockerfile),
                        "--build-arg", f"BASE_IMAGE={base}",
                        "--tag", ref,
                        str(SERVERS_DIR),
                    ],
                )  # fmt: skip
            _run(["docker", "tag", ref, f"{repo}:latest"])
            refs[var] = ref
    return refs


def prune(keep: str) -> None:
    """Remove all but the newest KEEP_IMAGES ``evcharge:<hash>`` images (never ``keep``).

    Images still used by a container are left alone (``docker rmi`` refuses them).
    """
    out = _run(["docker", "images", IMAGE_REPO, "--format", "{{.CreatedAt}}\t{{.Tag}}"])
    rows = sorted((line.split("\t") for line in out.splitlines() if "\t" in line), reverse=True)
    tags = [tag for _, tag in rows if re.fullmatch(r"[0-9a-f]{12}", tag)]
    for tag in tags[KEEP_IMAGES:]:
        if f"{IMAGE_REPO}:{tag}" != keep:
            with contextlib.suppress(ImageBuildError):
                _run(["docker", "rmi", f"{IMAGE_REPO}:{tag}"], timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.images", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the image (or reuse it) and print its reference")
    b.add_argument("--base", default=os.environ.get("EV_BASE_IMAGE", "auto"))
    b.add_argument("--latest", action=argparse.BooleanOptionalAction, default=True)
    p = sub.add_parser(
        "build-prometheus", help="build the Prometheus image of the observability profile"
    )
    p.add_argument("--base", default=os.environ.get("EV_BASE_IMAGE", "auto"))
    p.add_argument("--latest", action=argparse.BooleanOptionalAction, default=True)
    s = sub.add_parser("build-servers", help="build the NATS and PostgreSQL images")
    s.add_argument("--base", default=os.environ.get("EV_BASE_IMAGE", "auto"))
    args = parser.parse_args(argv)
    if not docker_available():
        print("error: no Docker engine answers (is the daemon running?)", file=sys.stderr)
        return 1
    try:
        if args.command == "build-prometheus":
            print(build_prometheus(args.base, tag_latest=args.latest))
        elif args.command == "build-servers":
            for var, ref in build_servers(args.base).items():
                print(f"{var}={ref}")
        else:
            print(build(args.base, tag_latest=args.latest))
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
