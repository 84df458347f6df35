"""``python -m bench.profile_summary FILE [--top N] [--under TEXT]``: sum py-spy collapsed stacks.

``bench cpu --profile DIR`` leaves one file per process, one line per distinct stack
(``frame;frame;... count``). This prints, per function, the share of samples spent in it
(self) and under it (inclusive), the largest first: enough to see where a process's time goes
and, run on two versions of the code, what changed. ``--under TEXT`` keeps only the stacks
that pass through a frame containing TEXT (e.g. ``_commit``), to read one path in detail.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r" \((?P<file>[^()]*):\d+\)$")


def _function(frame: str) -> str:
    """``name (path/to/file.py:12)`` -> ``name (file.py)``: lines of one function summed."""
    match = _LINE.search(frame)
    if not match:
        return frame
    path = match["file"]
    short = "/".join(path.split("/")[-2:])
    return f"{frame[:match.start()]} ({short})"


def summarise(path: Path, under: str | None = None) -> tuple[int, Counter[str], Counter[str]]:
    """(total samples, self samples per function, inclusive samples per function)."""
    total, own, inclusive = 0, Counter[str](), Counter[str]()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_function(f) for f in stack.split(";")]
        if under is not None and not any(under in f for f in frames):
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, own, inclusive


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--under", default=None, help="only stacks through a frame containing this")
    args = p.parse_args(argv)
    total, own, inclusive = summarise(args.file, args.under)
    if not total:
        print("no samples")
        return 1
    print(f"{total} samples{' under ' + args.under if args.under else ''}")
    print(f"{'self %':>7} {'incl %':>7}  function")
    for name, count in own.most_common(args.top):
        print(f"{100 * count / total:7.1f} {100 * inclusive[name] / total:7.1f}  {name}")
    print(f"\n{'incl %':>7}  function (inclusive, largest first)")
    for name, count in inclusive.most_common(args.top):
        print(f"{100 * count / total:7.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
