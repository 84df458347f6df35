"""``python -m bench cron``: many cron functions ticking at once, and how late their runs are.

Registers ``--functions`` cron functions (default 10,000, in apps of 1,000, every minute: they
all tick at the same instant) on a real gateway and worker on loopback, waits for
``--ticks`` ticks (default 1, so the bench takes at most about two minutes) and prints, per
run, how late the gateway created it after its tick (``queued_at`` minus the tick) and how late
the worker was handed it (``started_at`` minus the tick), p50/p99/max.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench.cluster import Cluster
from bench.throughput import _wait_completed, _wait_workers

APP = '''
from worker import App, TriggerCron

APPS = {apps}
PER_APP = {per_app}
apps = []
for a in range(APPS):
    app = App(f"crons{{a}}")
    for i in range(PER_APP):
        async def tick(ctx):
            return None
        app.function(id=f"c{{i}}", trigger=TriggerCron("{cron}"), retries=0)(tick)
    apps.append(app)
'''


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench cron", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--functions", type=int, default=10_000, help="cron functions registered")
    p.add_argument("--per-app", type=int, default=1000, help="functions per app")
    p.add_argument("--cron", default="* * * * *", help="every function's schedule")
    p.add_argument("--ticks", type=int, default=1, help="ticks to wait for")
    p.add_argument("--concurrency", type=int, default=1000, help="the worker's --concurrency")
    args = p.parse_args(argv)
    apps = max(1, args.functions // args.per_app)
    total = apps * args.per_app
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "crons.py").write_text(APP.format(apps=apps, per_app=args.per_app,
                                                     cron=args.cron))
        cluster = Cluster(workdir, gateway_args=["--log-level", "warning"])
        try:
            cluster.start_gateway()
            (workdir / "cronspecs.py").write_text(
                "from crons import apps\n" + "".join(
                    f"app{a} = apps[{a}]\n" for a in range(apps)))
            began = time.time()
            cluster.start_worker(*[f"cronspecs:app{a}" for a in range(apps)],
                                 args=("--concurrency", str(args.concurrency),
                                       "--log-level", "warning"))
            _wait_workers(cluster, 1, timeout=120)
            while len(cluster.get("/v1/functions")["data"]) < total:
                time.sleep(0.2)
            print(f"{total:,} cron functions ({args.cron!r}) registered in "
                  f"{time.time() - began:.1f} s; waiting for {args.ticks} tick(s)", flush=True)
            if args.cron == "* * * * *":  # nothing completes before the first tick
                time.sleep(max(0.0, (int(time.time()) // 60 + 1) * 60 - time.time()))
            try:
                _wait_completed(cluster, total * args.ticks, timeout=60.0 * args.ticks + 120)
            except TimeoutError:
                conn = sqlite3.connect(f"file:{workdir / 'tether.db'}?mode=ro", uri=True)
                print("runs by status:", conn.execute(
                    "SELECT status, count(*) FROM runs GROUP BY status").fetchall())
                raise
            conn = sqlite3.connect(f"file:{workdir / 'tether.db'}?mode=ro", uri=True)
            rows = conn.execute("SELECT event_ids, queued_at, started_at FROM runs").fetchall()
            conn.close()
            created, started = [], []
            for event_ids, queued_at, started_at in rows:
                tick = int(json.loads(event_ids)[0].rsplit("-", 1)[1]) / 1000
                created.append((queued_at - tick) * 1e3)
                if started_at is not None:
                    started.append((started_at - tick) * 1e3)
            created.sort()
            started.sort()
            ticks = len({json.loads(r[0])[0].rsplit("-", 1)[1] for r in rows})
            print(f"  runs                    {len(rows):,} over {ticks} distinct tick(s) "
                  f"(one per function and tick)")
            for what, values in (("run created after tick", created),
                                 ("run leased after tick", started)):
                print(f"  {what:<24}p50 {statistics.median(values):.0f} ms, "
                      f"p99 {_pct(values, 0.99):.0f} ms, max {values[-1]:.0f} ms")
        finally:
            cluster.stop()
    return 0
