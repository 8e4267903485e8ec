"""Profile the broker under the read-path load: where does a request spend its time?

Starts ``python -m broker serve`` from this tree, registers points, and runs
:func:`tests.bench.loadgen.closed_loop` against it while a sampling profiler
watches the broker:

* with ``py-spy`` on PATH (``pip install py-spy``; it needs ptrace rights), the
  broker is sampled from outside and only samples where it is running on a CPU
  count (``--idle`` off), so waiting for a core on a loaded machine does not show
  up as cost. Printed: own samples per function and inclusive samples per
  function, as a percentage of the broker's busy samples.
* otherwise the broker runs under ``cProfile`` (wall-clock: on a loaded machine
  preemption inside a system call is charged to that call).

Run: ``python -m tests.bench.profile_read_path [points] [kind] [seconds]``
(defaults 10, bateria, 5). Not one of ``make bench``'s benchmarks (no ``bench_`` prefix).
"""

from __future__ import annotations

import collections
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.bench import loadgen
from tests.bench.bench_read_path import CONNS, QUERIES, Broker, extra_args, register

TOP = 30


def _frame(raw: str) -> str:
    """``fn (path/to/file.py:12)`` -> ``fn (file.py)``: lines merged per function."""
    name, _, where = raw.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})"


def print_collapsed(path: Path) -> None:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f]
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"{total} busy samples")
    print("own time:")
    for f, n in own.most_common(TOP):
        print(f"  {100 * n / total:5.1f} %  {f}")
    print("inclusive time:")
    for f, n in incl.most_common(TOP + 15):
        print(f"  {100 * n / total:5.1f} %  {f}")


def main(argv: list[str]) -> None:
    points = int(argv[0]) if argv else 10
    kind = argv[1] if len(argv) > 1 else "bateria"
    seconds = float(argv[2]) if len(argv) > 2 else 5.0
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "broker.prof")
        broker = Broker(
            "new",
            Path.cwd(),
            str(Path(tmp, "p.db")),
            extra_args(Path.cwd()),
            profile_to="" if spy else str(out),
        )
        sampler = None
        try:
            register([broker], points)
            if spy:
                spy_args = ["record", "--format", "raw", "-r", "250", "-o", str(out)]
                spy_args += ["-d", str(int(seconds)), "-p", str(broker.proc.pid)]
                sampler = subprocess.Popen(
                    [spy, *spy_args],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            r = loadgen.closed_loop(broker.ports.vehicle, CONNS, seconds, kind, QUERIES)
            print(f"{kind}, {points} points: {r['done'] / r['elapsed']:,.0f} req/s while profiled")
            if sampler is not None:
                sampler.wait(timeout=60)
        finally:
            if sampler is not None and sampler.poll() is None:
                sampler.kill()
                sampler.wait()
            broker.proc.signal(signal.SIGTERM)
            broker.proc.popen.wait(timeout=30)
        if spy:
            print_collapsed(out)
        else:
            stats = pstats.Stats(str(out))
            stats.sort_stats("tottime").print_stats(TOP)
            stats.sort_stats("cumulative").print_stats(TOP + 15)


if __name__ == "__main__":
    main(sys.argv[1:])
