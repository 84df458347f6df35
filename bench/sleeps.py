"""``python -m bench sleeps``: many concurrent durable sleeps, and how late they wake.

Sends ``--runs`` events (default 10,000) to a function that records a step, sleeps
``--seconds`` (default 1 s) and records another step, served by a real gateway and worker on
loopback. The sleeping runs hold no worker slot (``--concurrency`` is far below the number of
runs). Lateness is, per run, the time from the sleep's due moment (when the gateway stored the
sleep, plus its duration) to the moment the gateway leased the run back with the sleep done.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.cluster import Cluster
from bench.throughput import _wait_completed, _wait_workers

APP = '''
from worker import App, TriggerEvent

app = App("sleepers")


@app.function(id="nap", trigger=TriggerEvent("bench/nap"), retries=0)
async def nap(ctx):
    await ctx.step.run("before", _noop)
    await ctx.step.sleep("zz", ctx.event.data["seconds"])
    await ctx.step.run("after", _noop)


async def _noop():
    return None
'''


@dataclass
class Lateness:
    """Per run, how late its sleep woke (ms, sorted); how long sending and the whole took;
    the gateway's peak RSS."""

    late_ms: list[float]
    sent_s: float
    total_s: float
    peak_rss_mib: float


def measure(*, runs: int = 10_000, seconds: float = 1.0, concurrency: int = 500,
            batch: int = 1000, prepare: Callable[[Path], None] | None = None) -> Lateness:
    """Sleep ``runs`` runs at once and read how late each woke.

    ``prepare`` fills the SQLite file (its path is given) before the gateway starts.
    """
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "sleepers.py").write_text(APP)
        if prepare is not None:
            prepare(workdir / "tether.db")
        cluster = Cluster(workdir, gateway_args=["--log-level", "warning"])
        try:
            cluster.start_gateway()
            cluster.start_worker("sleepers:app", args=("--concurrency", str(concurrency),
                                                       "--log-level", "warning"))
            _wait_workers(cluster, 1)
            began = time.time()
            for start in range(0, runs, batch):
                cluster.send([{"name": "bench/nap", "data": {"seconds": seconds}}
                              for _ in range(start, min(runs, start + batch))])
            sent = time.time() - began
            _wait_completed(cluster, runs, timeout=120 + seconds)
            total = time.time() - began
            rss = cluster.gateway.peak_rss_kib() / 1024 if cluster.gateway else 0.0
            conn = sqlite3.connect(f"file:{workdir / 'tether.db'}?mode=ro", uri=True)
            rows = conn.execute(
                "SELECT s.started_at, s.ended_at FROM runs r JOIN steps s ON s.run_id = r.id "
                "WHERE r.function_id = 'sleepers/nap' AND s.step_id = 'zz'").fetchall()
            conn.close()
        finally:
            cluster.stop()
    late = sorted(max(0.0, end - (start + seconds)) * 1e3 for start, end in rows)
    return Lateness(late, sent, total, rss)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench sleeps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10_000, help="concurrent sleeping runs")
    p.add_argument("--seconds", type=float, default=1.0, help="how long each run sleeps")
    p.add_argument("--concurrency", type=int, default=500, help="the worker's --concurrency")
    p.add_argument("--batch", type=int, default=1000, help="events per POST")
    args = p.parse_args(argv)
    f = measure(runs=args.runs, seconds=args.seconds, concurrency=args.concurrency,
                batch=args.batch)
    print(f"{args.runs:,} runs sleeping {args.seconds:g} s at once (sent in "
          f"{f.sent_s:.1f} s), one worker with --concurrency {args.concurrency}:")
    print(f"  wake-up lateness        {lateness(f.late_ms)}")
    print(f"  all completed after     {f.total_s:.1f} s", flush=True)
    return 0


def lateness(late_ms: list[float]) -> str:
    if not late_ms:
        return "n/a"
    return (f"p50 {statistics.median(late_ms):.1f} ms, "
            f"p99 {late_ms[int(0.99 * len(late_ms))]:.1f} ms, max {late_ms[-1]:.1f} ms")
