"""``python -m tests.chaos``: one chaos run (see tests/chaos/run.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tests.chaos.run import main


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    p.add_argument("--minutes", type=float,
                   default=float(os.environ.get("CHAOS_MINUTES", "20")),
                   help="minutes of faults (env CHAOS_MINUTES, default 20)")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="replay the run of this seed")
    p.add_argument("--drivers", type=int, default=3, help="drivers per region (default 3)")
    p.add_argument("--out", type=Path, default=Path("var/chaos"),
                   help="folder for report.json and journal.jsonl (default var/chaos)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.drivers < 1:
        p.error("--minutes must be > 0 and --drivers >= 1")
    return args


if __name__ == "__main__":
    a = parse(sys.argv[1:])
    sys.exit(main(a.minutes, a.seed, a.out, a.keep, a.drivers))
