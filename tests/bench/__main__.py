"""Run the benchmarks: ``python -m tests.bench [name ...]``.

Every ``tests/bench/bench_<name>.py`` module exposes ``main() -> None`` that prints its
figures.  With no argument every benchmark runs; otherwise only those named (``decoder``
or ``bench_decoder``).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

PREFIX = "bench_"


def available() -> list[str]:
    """Names (without the ``bench_`` prefix) of every benchmark module here."""
    folder = str(Path(__file__).resolve().parent)
    return sorted(
        info.name[len(PREFIX) :]
        for info in pkgutil.iter_modules([folder])
        if info.name.startswith(PREFIX)
    )


def run(names: list[str]) -> int:
    """Run the named benchmarks (all when empty); the process exit status."""
    known = available()
    wanted = [name.removeprefix(PREFIX).removesuffix(".py") for name in names] or known
    unknown = [name for name in wanted if name not in known]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    for name in wanted:
        module = importlib.import_module(f"{__package__ or 'tests.bench'}.{PREFIX}{name}")
        print(f"=== {name} ===", flush=True)
        started = time.perf_counter()
        module.main()
        print(f"--- {name}: {time.perf_counter() - started:.1f} s\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
