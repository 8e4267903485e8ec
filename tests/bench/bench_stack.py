"""Containers: image build (cache hit), stack up to a healthy broker, first trip, teardown.

Prints wall-clock figures. The image is built first if this tree has none yet
(that first build is timed too). Skipped, with the reason, without Docker.
"""

from __future__ import annotations

import shutil
import time

from ops import images


def _timed(label: str, start: float) -> float:
    now = time.perf_counter()
    print(f"  {label:<42} {now - start:7.2f} s")
    return now


def main() -> None:
    print("stack (docker-compose, wall clock)")
    if shutil.which("docker-compose") is None or not images.docker_available():
        print("  skipped: no Docker engine or docker-compose")
        return
    from tests.compose.conftest import LAT, LON, running_stack

    t = time.perf_counter()
    ref = images.build(tag_latest=False)
    t = _timed(f"image {ref} (build or reuse)", t)
    images.build(tag_latest=False)
    t = _timed("image again (cache hit)", t)
    with running_stack(ref) as stack:
        t = _timed("up, broker healthy, probe container", t)
        stack.points()
        t = _timed("one list request (docker exec)", t)
        stack.probe(
            "ev-vehicle", "--json", "--id", "BENCH1", "drive", f"--lat={LAT}", f"--lon={LON}",
            "--battery", "20", "--target", "40", "--capacity-kwh", "10", timeout=120,
        )  # fmt: skip
        t = _timed("one drive trip, reserve to bill", t)
    _timed("down -v", t)
