"""``python -m bench flow``: what flow control costs on the hot path.

The throughput benchmark's three-step function, measured three times in one run with the
same load: without flow control, with ``Concurrency(5, key=tenant)`` and with
``Throttle(1000, "1s", burst=1000, key=tenant)``, events spread over ``--tenants`` tenants
(limits loose enough that they never hold a run back: what is measured is the bookkeeping).
Prints each variant's figures and its overhead against the plain function (the issue's bar:
under 25%).
"""

from __future__ import annotations

import argparse
import sys

from bench.throughput import Figures, measure, ms

VARIANTS = (("none", "bench/go"), ("concurrency keys", "bench/keyed"),
            ("throttle keys", "bench/throttled"))


def _change(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.1f}%"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench flow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10000, help="events per variant")
    p.add_argument("--tenants", type=int, default=1000, help="distinct keys")
    p.add_argument("--light", type=int, default=200, help="light-load events per variant")
    p.add_argument("--concurrency", type=int, default=500, help="--concurrency of the worker")
    args = p.parse_args(argv)
    results: dict[str, Figures] = {}
    for label, event in VARIANTS:
        print(f"-- {label} ({args.events} events over {args.tenants} tenants)", flush=True)
        f = measure(events=args.events, light=args.light, concurrency=args.concurrency,
                    event=event, tenants=args.tenants, progress=False)
        results[label] = f
        print(f"  events/s accepted       {f.events_per_s:,.0f}")
        print(f"  durable steps/s         {f.steps_per_s:,.0f}")
        print(f"  light event -> start    {ms(f.light_start)}")
        print(f"  load event -> start     {ms(f.load_start)}", flush=True)
    base = results["none"]
    print("against no flow control:")
    for label, f in results.items():
        if label == "none":
            continue
        print(f"  {label:<18} steps/s {_change(f.steps_per_s, base.steps_per_s)}, "
              f"events/s {_change(f.events_per_s, base.events_per_s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
