"""ops.images and the base-image script: input hashing and the host's apt mirror lookup."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ops import images

SCRIPT = images.OPS / "build-base-image.sh"


def test_inputs_hash_is_stable_and_follows_the_base() -> None:
    first = images.inputs_hash("sha256:aaa")
    assert first == images.inputs_hash("sha256:aaa")
    assert len(first) == 12 and int(first, 16) >= 0
    assert images.inputs_hash("sha256:bbb") != first


def test_image_inputs_cover_the_packages_and_the_container_files() -> None:
    names = {str(p.relative_to(images.ROOT)) for p in images.source_files()}
    assert {"ops/Dockerfile", "ops/entrypoint.sh", "ops/healthcheck.py", "pyproject.toml"} <= names
    assert any(n.startswith("broker/") for n in names)
    assert any(n.startswith("station/") for n in names)
    assert any(n.startswith("vehicle/") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def _mirror(tmp_path: Path, *files: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    paths = []
    for name, text in files:
        path = tmp_path / name
        path.write_text(text)
        paths.append(str(path))
    return subprocess.run(
        ["bash", str(SCRIPT), "--print-mirror"],
        env={"PATH": "/usr/bin:/bin", "EV_APT_SOURCES": " ".join(paths)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_mirror_from_deb822_sources_skips_security_and_other_suites(tmp_path: Path) -> None:
    sources = (
        "Types: deb\nURIs: http://mirror.invalid/other\nSuites: trixie\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src.invalid/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
    )
    proc = _mirror(tmp_path, ("debian.sources", sources))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "http://mirror.invalid/debian"


def test_mirror_from_one_line_sources_with_options(tmp_path: Path) -> None:
    text = (
        "# comment\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://elsewhere.invalid/x stable main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main\n"
    )
    proc = _mirror(tmp_path, ("sources.list", text))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "http://mirror.invalid/debian"


@pytest.mark.parametrize("text", ["", "deb http://mirror.invalid/debian trixie main\n"])
def test_no_mirror_is_an_error(tmp_path: Path, text: str) -> None:
    proc = _mirror(tmp_path, ("sources.list", text))
    assert proc.returncode != 0
    assert proc.stdout.strip() == ""
