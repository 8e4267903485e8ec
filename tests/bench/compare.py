"""Whole benchmarks side by side: an older commit's and this tree's, in ONE run.

``python -m tests.bench.compare [--base REV] [--rounds N] [--stat S] NAME [NAME ...]``

The ``base`` commit is exported with ``git archive`` into a temporary folder. For
every round and every named benchmark, that tree's ``python -m tests.bench NAME``
and this tree's run one after the other (the order alternates between rounds, so
that a load that comes and goes on the machine falls on both). Each run is a
separate process tree: the old one imports only the old packages (its folder is
the working directory and the whole ``PYTHONPATH``), and every process it starts
inherits that.

Lines are paired by their text with the numbers taken out; for each number of a
paired line the median over the rounds (``--stat min`` or ``max``: the best of
each tree, for figures where a process that lands on a slower core only adds
noise) is printed for old and new, with the ratio new/old. Whether higher is
better depends on the figure (a rate or a time): the line says what it measures.
Lines only one side prints are listed apart.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.bench.bench_read_path import export_tree
from tests.support.procs import ROOT

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?")
#: lines that carry no figure (headers, timing of the whole benchmark) are not paired
SKIP = re.compile(r"^(=== |--- )")


def run_once(tree: Path, name: str, timeout: float) -> list[str]:
    """The lines ``python -m tests.bench NAME`` prints when run in ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", name],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        raise SystemExit(f"{name} failed in {tree} (exit {done.returncode}):\n{tail}")
    return [line for line in done.stdout.splitlines() if line.strip() and not SKIP.match(line)]


def figures(lines: list[str]) -> dict[str, list[float]]:
    """Each line's text without its numbers -> its numbers (first line wins on repeats)."""
    out: dict[str, list[float]] = {}
    for line in lines:
        numbers = [float(n.replace(",", "")) for n in NUMBER.findall(line)]
        if not numbers:
            continue
        label = " ".join(NUMBER.sub("#", line).split())
        out.setdefault(label, numbers)
    return out


def fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


STATS: dict[str, Callable[[list[float]], float]] = {
    "median": statistics.median,
    "min": min,
    "max": max,
}


def report(
    name: str,
    old_runs: list[dict[str, list[float]]],
    new_runs: list[dict[str, list[float]]],
    stat: str = "median",
) -> None:
    pick = STATS[stat]
    print(f"=== {name}: old vs new, {stat} of {len(old_runs)} round(s) ===")
    labels = [label for label in new_runs[0] if all(label in run for run in old_runs + new_runs)]
    for label in labels:
        width = min(len(run[label]) for run in old_runs + new_runs)
        cells = []
        for i in range(width):
            old = pick([run[label][i] for run in old_runs])
            new = pick([run[label][i] for run in new_runs])
            ratio = f"{new / old:.2f}" if old else "-"
            cells.append(f"{fmt(old)} -> {fmt(new)} (x{ratio})")
        print(f"  {label}\n      " + "; ".join(cells))
    only_old = sorted(set(old_runs[0]) - set(new_runs[0]))
    only_new = sorted(set(new_runs[0]) - set(old_runs[0]))
    for title, rows in (("only old", only_old), ("only new", only_new)):
        for label in rows:
            print(f"  [{title}] {label}")
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.compare", description=__doc__)
    parser.add_argument("names", nargs="+", help="benchmarks, as for python -m tests.bench")
    parser.add_argument("--base", default=os.environ.get("EV_BENCH_BASE", "506897b"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument(
        "--stat",
        choices=sorted(STATS),
        default="median",
        help="per figure over the rounds: min suits times when a process can land on a "
        "slower core (the best of each tree), max suits rates",
    )
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="evbench-"))
    try:
        old_tree = export_tree(args.base, folder / "old")
        print(f"old = {args.base} (git archive), new = this tree; {args.rounds} rounds", flush=True)
        for name in args.names:
            old_runs: list[dict[str, list[float]]] = []
            new_runs: list[dict[str, list[float]]] = []
            started = time.perf_counter()
            for round_no in range(args.rounds):
                order = [(old_tree, old_runs), (ROOT, new_runs)]
                if round_no % 2:
                    order.reverse()
                for tree, runs in order:
                    runs.append(figures(run_once(tree, name, args.timeout)))
            report(name, old_runs, new_runs, args.stat)
            print(f"--- {name}: {time.perf_counter() - started:.0f} s\n", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
