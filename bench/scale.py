"""``python -m bench scale``: the same load on SQLite, and on PostgreSQL with 1, 2, 3 gateways.

Each configuration runs :func:`bench.throughput.measure` with one worker per gateway (each
worker also knows the other gateways' URLs) and prints one line: durable steps/s and
event -> run completed latency at light load and under load. All processes share this
machine's cores, so more gateways here measure the cost of coordination, not a gain.
"""

from __future__ import annotations

import argparse

from bench.throughput import measure, ms

CONFIGS = (("sqlite", 1), ("postgres", 1), ("postgres", 2), ("postgres", 3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10000, help="events per configuration")
    p.add_argument("--light", type=int, default=100, help="light-load events per configuration")
    args = p.parse_args(argv)
    print(f"{'store':<10} {'gateways':>8} {'steps/s':>9}  light-load completion"
          f"{'':<14}under-load completion", flush=True)
    for kind, gateways in CONFIGS:
        f = measure(db_kind=kind, gateways=gateways, events=args.events, light=args.light,
                    progress=False)
        print(f"{kind:<10} {gateways:>8} {f.steps_per_s:>9,.0f}  {ms(f.light_end):<34} "
              f"{ms(f.load_end)}", flush=True)
    return 0
