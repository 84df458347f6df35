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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench sleeps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10_000, help="concurrent sleeping runs")
    p.add_argument("--seconds", type=float, default=1.0, help="how long each run sleeps")
    p.add_argument("--concurrency", type=int, default=500, help="the worker's --concurrency")
    p.add_argument("--batch", type=int, default=1000, help="events per POST")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "sleepers.py").write_text(APP)
        cluster = Cluster(workdir, gateway_args=["--log-level", "warning"])
        try:
            cluster.start_gateway()
            cluster.start_worker("sleepers:app", args=("--concurrency", str(args.concurrency),
                                                       "--log-level", "warning"))
            _wait_workers(cluster, 1)
            began = time.time()
            for start in range(0, args.runs, args.batch):
                cluster.send([{"name": "bench/nap", "data": {"seconds": args.seconds}}
                              for _ in range(start, min(args.runs, start + args.batch))])
            sent = time.time() - began
            _wait_completed(cluster, args.runs, timeout=120 + args.seconds)
            conn = sqlite3.connect(f"file:{workdir / 'tether.db'}?mode=ro", uri=True)
            rows = conn.execute(
                "SELECT started_at, ended_at FROM steps WHERE step_id = 'zz'").fetchall()
            conn.close()
            late = sorted(max(0.0, end - (start + args.seconds)) * 1e3 for start, end in rows)
            print(f"{args.runs:,} runs sleeping {args.seconds:g} s at once (sent in "
                  f"{sent:.1f} s), one worker with --concurrency {args.concurrency}:")
            print(f"  wake-up lateness        p50 {statistics.median(late):.1f} ms, "
                  f"p99 {late[int(0.99 * len(late))]:.1f} ms, max {late[-1]:.1f} ms")
            print(f"  all completed after     {time.time() - began:.1f} s", flush=True)
        finally:
            cluster.stop()
    return 0
