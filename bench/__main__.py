"""``python -m bench [throughput|waits|sleeps|all] [options]``: print figures of the hot paths.

    throughput   events -> 3-step runs through a gateway and workers: steps/s, latencies
    waits        cost of matching one event against 10,000 runs waiting for events
    sleeps       10,000 concurrent 1 s sleeps: how late they wake (p50/p99)
    scale        throughput on SQLite, and on PostgreSQL with 1, 2 and 3 gateways
    all          every benchmark with its default options

``python -m bench NAME --help`` lists a benchmark's options. With no name: throughput.
"""

from __future__ import annotations

import sys

from bench import scale, sleeps, throughput, waits

BENCHMARKS = {"throughput": throughput.main, "waits": waits.main, "sleeps": sleeps.main,
              "scale": scale.main}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name = argv[0] if argv and not argv[0].startswith("-") else "throughput"
    rest = argv[1:] if argv and not argv[0].startswith("-") else argv
    if name == "all":
        for bench in BENCHMARKS.values():
            if code := bench([]):
                return code
            print(flush=True)
        return 0
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n{__doc__}", file=sys.stderr)
        return 2
    return BENCHMARKS[name](rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
