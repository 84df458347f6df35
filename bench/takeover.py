"""``python -m bench takeover``: a gateway lost under load, and how soon its runs complete.

``--gateways`` gateways (default 3) share a throwaway PostgreSQL database; each has one worker
that knows every gateway (its own first). ``--runs`` runs of three steps (the second takes
``--hold`` seconds, so runs are always in flight) go in through every gateway. While runs
leased through gateway 0 are running, gateway 0 is lost, twice, each time on a fresh database:

* ``kill -9``: its peers presume it dead after its beats stop (5 s) and requeue its leases;
* ``SIGTERM``: it tells its workers to go and releases their leases itself, at once.

Printed for each: how many runs were leased through it, and the time from the kill (or the
signal) to the last of them completing, and to the last run of all completing. The
end-to-end tests check that every run completes; these are the figures.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

from bench.cluster import Cluster
from bench.throughput import Database, _wait_workers

APP = '''
import asyncio

from worker import App, TriggerEvent

app = App("takeover")


async def quick(n):
    return n


async def slow(seconds):
    await asyncio.sleep(seconds)
    return seconds


@app.function(id="three", trigger=TriggerEvent("bench/takeover"), retries=2)
async def three(ctx):
    await ctx.step.run("a", quick, 1)
    await ctx.step.run("b", slow, ctx.event.data["hold"])
    return await ctx.step.run("c", quick, 3)
'''

FINAL = "('Completed', 'Failed', 'Cancelled')"


def scenario(how: str, *, gateways: int, runs: int, hold: float, concurrency: int
             ) -> tuple[int, float, float, int]:
    """(runs leased through gateway 0 when it went, seconds until they completed, seconds
    until every run completed, runs not completed) for ``how`` in ("kill", "sigterm")."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        workdir = Path(tmp)
        db = Database("postgres", workdir)
        group = [Cluster(workdir / f"gw{i}", db=db.url, gateway_args=["--log-level", "warning"])
                 for i in range(gateways)]
        try:
            for cluster in group:
                (cluster.workdir / "takeoverapp.py").write_text(APP)
                cluster.start_gateway()
            urls = [c.connect_url for c in group]
            for i, cluster in enumerate(group):
                order = urls[i:] + urls[:i]
                cluster.start_worker("takeoverapp:app", name=f"worker{i}", args=(
                    *(a for u in order[1:] for a in ("--gateway", u)),
                    "--concurrency", str(concurrency), "--log-level", "warning"))
            for cluster in group:
                _wait_workers(cluster, 1)
            victim = group[0]
            victim_id = victim.get("/health")["gateway_id"]
            per = runs // gateways
            for i, cluster in enumerate(group):
                for start in range(0, per, 100):
                    cluster.send([{"name": "bench/takeover", "data": {"hold": hold, "i": n}}
                                  for n in range(i * per + start, i * per + min(per, start + 100))])
            leased_sql = (f"SELECT id FROM runs WHERE session_id LIKE '{victim_id}.%'"
                          f" AND status NOT IN {FINAL}")
            deadline = time.monotonic() + 60
            while not db.rows(leased_sql):
                if time.monotonic() > deadline:
                    raise TimeoutError("no run was ever leased through gateway 0")
                time.sleep(0.02)
            if how == "kill":
                went_at = time.time()
                assert victim.gateway is not None
                victim.gateway.kill()
            else:
                assert victim.gateway is not None
                victim.gateway.signal(signal.SIGTERM)
                went_at = time.time()
            lost = {r for (r,) in db.rows(leased_sql)}
            total = per * gateways
            deadline = time.monotonic() + 120 + hold * total / concurrency
            while db.rows(f"SELECT count(*) FROM runs WHERE status IN {FINAL}")[0][0] < total:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            rows = db.rows("SELECT id, status, ended_at FROM runs")
            ended = {r[0]: r[2] for r in rows if r[1] == "Completed"}
            missing = total - len(ended)
            mine = [ended[r] for r in lost if r in ended]
            return (len(lost), (max(mine) - went_at) if mine else float("nan"),
                    max(ended.values(), default=went_at) - went_at, missing)
        finally:
            for cluster in group:
                cluster.stop()
            db.drop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench takeover", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateways", type=int, default=3, help="gateways on one database (>= 2)")
    p.add_argument("--runs", type=int, default=900, help="runs, spread over the gateways")
    p.add_argument("--hold", type=float, default=1.0, help="seconds step b takes")
    p.add_argument("--concurrency", type=int, default=100, help="each worker's --concurrency")
    args = p.parse_args(argv)
    if args.gateways < 2:
        p.error("a takeover needs another gateway: --gateways 2 or more")
    print(f"{args.gateways} gateways on PostgreSQL, one worker each (--concurrency "
          f"{args.concurrency}), {args.runs} runs of 3 steps (step b takes {args.hold:g} s):",
          flush=True)
    for how, label in (("kill", "kill -9"), ("sigterm", "SIGTERM")):
        lost, theirs, last, missing = scenario(how, gateways=args.gateways, runs=args.runs,
                                               hold=args.hold, concurrency=args.concurrency)
        print(f"  {label:<8} {lost} runs leased through it; they completed {theirs:.1f} s "
              f"after, the last run of all {last:.1f} s after"
              + (f"; {missing} runs NOT completed" if missing else ""), flush=True)
    return 0
