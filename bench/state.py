"""``python -m bench state``: do the figures hold with a big store behind the gateway?

Builds one SQLite store with ``--completed`` finished runs (default 1,000,000, of the
benchmark's own function and a second one, over 30 days, three steps each) and ``--queued``
runs ready to start of a function no worker serves (default 100,000: a backlog), written
straight into a database made by the gateway's own migrations (``bench dashboard``'s seeding).
Then, each against a fresh copy of an empty store and of the big one:

* start-up: how long a gateway takes to answer ``GET /health`` (migrations, recovery);
* ``bench throughput``: durable steps/s, light-load latencies, the gateway's peak RSS;
* ``bench sleeps``: ``--sleeps`` concurrent 1 s sleeps (default 10,000), wake-up lateness.

It prints both columns and big/empty. The issue's bar: steps/s and latencies within 20%, the
gateway under 300 MiB, sleeps late by at most 500 ms at p99. ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import dashboard, sleeps, throughput
from bench.cluster import Cluster

COMPLETED_FUNCTIONS = ["bench/three-steps", "archive/report"]
IDLE_FUNCTION = "idle/backlog"


def build(path: Path, completed: int, queued: int, *, progress: bool = True) -> float:
    """Write the big store at ``path``; returns the seconds it took."""
    rng = random.Random(12)
    now = time.time()
    began = time.monotonic()

    def told(what: str, total: int) -> Callable[[int], None]:
        def tell(done: int) -> None:
            if progress:
                print(f"  {what}: {done:,} of {total:,} written "
                      f"({time.monotonic() - began:.0f} s)", flush=True)
        return tell

    dashboard.seed(path, completed, now, rng, mix=[("Completed", 1.0)],
                   functions=COMPLETED_FUNCTIONS, progress=told("completed runs", completed))
    if queued:
        dashboard.seed(path, queued, now, rng, mix=[("Queued", 1.0)],
                       functions=[IDLE_FUNCTION], ready=True, days=1,
                       progress=told("queued runs", queued))
    return time.monotonic() - began


def _copier(source: Path | None) -> Callable[[Path], None] | None:
    """A ``prepare`` that starts the gateway on a copy of ``source`` (None: an empty store)."""
    if source is None:
        return None

    def copy(target: Path) -> None:
        shutil.copyfile(source, target)

    return copy


def startup(source: Path | None) -> float:
    """Seconds from a gateway's launch on a copy of ``source`` to its first ``/health``."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        workdir = Path(tmp)
        prepare = _copier(source)
        if prepare is not None:
            prepare(workdir / "tether.db")
        cluster = Cluster(workdir, gateway_args=["--log-level", "warning"])
        try:
            began = time.monotonic()
            cluster.start_gateway()
            return time.monotonic() - began
        finally:
            cluster.stop()


def run_all(source: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement against a fresh copy of ``source`` (None: an empty store)."""
    copy = _copier(source)
    figures: dict[str, Any] = {"startup_s": startup(source)}
    tp = throughput.measure(
        events=args.events, light=args.light, progress=False,
        prepare=None if copy is None else (lambda db: copy(db.path)))
    figures.update({
        "steps_per_s": tp.steps_per_s, "events_per_s": tp.events_per_s,
        "light_start_p50_ms": statistics.median(tp.light_start) * 1e3,
        "light_start_p99_ms": throughput._percentile(tp.light_start, 0.99) * 1e3,
        "light_end_p50_ms": statistics.median(tp.light_end) * 1e3,
        "light_end_p99_ms": throughput._percentile(tp.light_end, 0.99) * 1e3,
        "load_end_p99_ms": throughput._percentile(tp.load_end, 0.99) * 1e3,
        "gateway_peak_rss_mib": tp.peak_rss_mib,
        "gateway_cpu_ms_per_1000": tp.gateway_cpu_ms,
    })
    if args.sleeps:
        late = sleeps.measure(runs=args.sleeps, seconds=1.0, prepare=copy)
        figures.update({
            "sleep_late_p50_ms": statistics.median(late.late_ms),
            "sleep_late_p99_ms": late.late_ms[int(0.99 * len(late.late_ms))],
            "sleep_late_max_ms": late.late_ms[-1],
            "sleep_rss_mib": late.peak_rss_mib,
        })
    return figures


ROWS = [
    ("startup_s", "gateway start-up (to /health)", "{:.2f} s"),
    ("steps_per_s", "durable steps/s", "{:,.0f}"),
    ("events_per_s", "events/s accepted", "{:,.0f}"),
    ("light_start_p50_ms", "light: event -> start p50", "{:.1f} ms"),
    ("light_start_p99_ms", "light: event -> start p99", "{:.1f} ms"),
    ("light_end_p50_ms", "light: event -> done p50", "{:.1f} ms"),
    ("light_end_p99_ms", "light: event -> done p99", "{:.1f} ms"),
    ("load_end_p99_ms", "load: event -> done p99", "{:.0f} ms"),
    ("gateway_cpu_ms_per_1000", "gateway CPU per 1,000 runs", "{:,.0f} ms"),
    ("gateway_peak_rss_mib", "gateway peak RSS", "{:.0f} MiB"),
    ("sleep_late_p50_ms", "sleeps: lateness p50", "{:.1f} ms"),
    ("sleep_late_p99_ms", "sleeps: lateness p99", "{:.1f} ms"),
    ("sleep_late_max_ms", "sleeps: lateness max", "{:.1f} ms"),
    ("sleep_rss_mib", "sleeps: gateway peak RSS", "{:.0f} MiB"),
]


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def report(empty: dict[str, Any], big: dict[str, Any]) -> None:
    print(f"  {'':<32}{'empty':>14}{'big':>14}{'big/empty':>11}")
    for key, label, fmt in ROWS:
        if key not in empty or key not in big:
            continue
        ratio = big[key] / empty[key] if empty[key] else float("nan")
        print(f"  {label:<32}{fmt.format(empty[key]):>14}{fmt.format(big[key]):>14}"
              f"{ratio:>10.2f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench state", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--completed", type=int, default=1_000_000, help="completed runs stored")
    p.add_argument("--queued", type=int, default=100_000,
                   help="queued runs of a function no worker serves")
    p.add_argument("--sleeps", type=int, default=10_000,
                   help="concurrent 1 s sleeps (0: skip that phase)")
    p.add_argument("--events", type=int, default=20_000, help="events in the throughput phase")
    p.add_argument("--light", type=int, default=300, help="events in the light-load phase")
    p.add_argument("--repeats", type=int, default=1,
                   help="alternate empty and big this many times; print the medians")
    p.add_argument("--store", type=Path,
                   help="keep the big store at this path, and reuse it if it is there")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tether-bench-state-") as tmp:
        store = args.store or Path(tmp) / "big.db"
        if store.exists():
            print(f"reusing the store at {store}", flush=True)
        else:
            print(f"writing {args.completed:,} completed and {args.queued:,} queued runs",
                  flush=True)
            took = build(store, args.completed, args.queued)
            print(f"  written in {took:.0f} s, {store.stat().st_size / 2**20:,.0f} MiB",
                  flush=True)
        empties, bigs = [], []
        for i in range(args.repeats):
            print(f"measuring against an empty store ({i + 1} of {args.repeats})", flush=True)
            empties.append(run_all(None, args))
            print(f"measuring against the big store ({i + 1} of {args.repeats})", flush=True)
            bigs.append(run_all(store, args))
    empty, big = _medians(empties), _medians(bigs)
    print(f"{args.completed:,} completed + {args.queued:,} queued runs against an empty store "
          f"({args.events:,} events, {args.light} light, {args.sleeps:,} sleeps; medians of "
          f"{args.repeats}):")
    report(empty, big)
    if args.json:
        args.json.write_text(json.dumps({
            "completed": args.completed, "queued": args.queued, "sleeps": args.sleeps,
            "events": args.events, "repeats": args.repeats, "empty": empty, "big": big,
            "empty_runs": empties, "big_runs": bigs,
            "date": time.strftime("%Y-%m-%d"),
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
