"""``python -m bench cpu``: CPU time of the gateway and the worker per run of the 3-step function.

Wall-clock figures swing with whatever else the machine runs; the CPU time a process spends on a
fixed amount of work swings far less. This starts one gateway (SQLite) and one worker, as
``bench throughput`` does, warms them up, then ``--repeats`` times: posts ``--runs`` events in
batches of ``--batch``, waits until all their runs completed, and reads each process's user +
system CPU time from ``/proc/PID/stat``. It prints CPU milliseconds per 1,000 runs for the
gateway and the worker, per repeat and as the median.

Completion is watched by reading the SQLite file from this process, not by asking the gateway,
so the polling costs the gateway nothing, and the figures compare across versions of the code.

With ``--db postgres`` the gateway uses a throwaway database on ``TETHER_BENCH_PG_URL``'s
server, watched by :class:`bench.pgstats.PgWatch` (which also sees the completions): each
round also prints the CPU of the gateway's PostgreSQL backends per 1,000 runs, commits, WAL
syncs, NOTIFY notes, the share of HOT row updates and what the backends were sampled doing.
To compare commits, copy this file into an older checkout's ``bench/`` and run it there (the
gateway and the worker are imported from the checkout that holds ``bench/``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.cluster import Cluster

if TYPE_CHECKING:
    from bench.pgstats import PgFigures, PgWatch

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds; 0 once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICK


def _completed(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'Completed'")
                   .fetchone()[0])
    finally:
        conn.close()


def _wait_completed(db: Path, target: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            done = _completed(db)
        except sqlite3.OperationalError:  # the file is being created or is busy: ask again
            done = -1
        if done >= target:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {target} runs completed")
        time.sleep(0.05)


def _wait_workers(cluster: Cluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cluster.get("/v1/workers")["data"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not connect")
        time.sleep(0.05)


@dataclass
class Repeat:
    gateway_ms: float  # CPU ms per 1,000 runs
    worker_ms: float
    wall_s: float
    #: PostgreSQL only (``--db postgres``): what the database did in the round.
    pg: PgFigures | None = None


def _send(cluster: Cluster, first: int, count: int, batch: int) -> None:
    for start in range(first, first + count, batch):
        cluster.send([{"name": "bench/go", "data": {"i": i}}
                      for i in range(start, min(start + batch, first + count))])


def _profilers(pids: dict[str, int], into: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy sampling each process (collapsed stacks, ``NAME.txt``) until it is sent SIGINT."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy (into this venv)")
    into.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                              "--nonblocking", "-o", str(into / f"{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in pids.items()]


def measure(*, runs: int, repeats: int, warmup: int, batch: int, concurrency: int,
            profile: Path | None = None, progress: bool = True, db_kind: str = "sqlite"
            ) -> list[Repeat]:
    """Start a gateway and a worker, warm them up, and measure ``repeats`` rounds of ``runs``."""
    from bench.pgstats import PgWatch
    from bench.throughput import Database

    with tempfile.TemporaryDirectory(prefix="tether-bench-cpu-") as tmp:
        workdir = Path(tmp)
        database = Database(db_kind, workdir)
        cluster = Cluster(workdir, db=database.url, gateway_args=["--log-level", "warning"])
        db = workdir / "tether.db"
        watch: PgWatch | None = None

        def wait_completed(target: int, timeout: float) -> None:
            if watch is None:
                _wait_completed(db, target, timeout)
            else:
                watch.wait_completed(target, timeout)

        try:
            cluster.start_gateway()
            worker = cluster.start_worker("bench.app:app", args=(
                "--concurrency", str(concurrency), "--log-level", "warning"))
            _wait_workers(cluster)
            assert cluster.gateway is not None
            gateway = cluster.gateway
            sent = 0
            if warmup:
                if db_kind == "postgres":
                    watch = PgWatch(database.url)
                    watch.start()
                _send(cluster, sent, warmup, batch)
                sent += warmup
                wait_completed(sent, timeout=300)
                if watch is not None:
                    watch.stop()
            spies = _profilers({"gateway": gateway.pid, "worker": worker.pid}, profile
                               ) if profile else []
            results = []
            for i in range(repeats):
                if db_kind == "postgres":
                    watch = PgWatch(database.url)
                    watch.start()
                g0, w0, t0 = cpu_seconds(gateway.pid), cpu_seconds(worker.pid), time.monotonic()
                _send(cluster, sent, runs, batch)
                sent += runs
                wait_completed(sent, timeout=600)
                g1, w1, t1 = cpu_seconds(gateway.pid), cpu_seconds(worker.pid), time.monotonic()
                pg = watch.stop() if watch is not None else None
                r = Repeat((g1 - g0) * 1e6 / runs, (w1 - w0) * 1e6 / runs, t1 - t0, pg)
                results.append(r)
                if progress:
                    print(f"  repeat {i + 1}: gateway {r.gateway_ms:7.1f} ms  "
                          f"worker {r.worker_ms:7.1f} ms  per 1,000 runs  "
                          f"({runs * 3 / r.wall_s:,.0f} steps/s wall)", flush=True)
                    if pg is not None:
                        print(f"            postgres {pg.backend_cpu_s * 1e6 / runs:7.1f} ms, "
                              f"{pg.commits * 1000 / runs:.0f} commits, "
                              f"{pg.wal_syncs * 1000 / runs:.0f} WAL syncs (server-wide), "
                              f"{pg.notes * 1000 / runs:.0f} notes per 1,000 runs, "
                              f"{pg.hot_updates * 100 / max(pg.updates, 1):.0f}% of "
                              f"{pg.updates * 1000 / runs:,.0f} row updates HOT; "
                              f"backends: {pg.waits()}", flush=True)
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            return results
        finally:
            cluster.stop()
            database.drop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3000, help="events (runs) per repeat")
    p.add_argument("--repeats", type=int, default=3, help="measured rounds")
    p.add_argument("--warmup", type=int, default=1000, help="runs before the first round")
    p.add_argument("--batch", type=int, default=500, help="events per POST")
    p.add_argument("--concurrency", type=int, default=1000, help="the worker's --concurrency")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="sample both processes with py-spy during the rounds (note: py-spy "
                        "costs them CPU too): DIR/gateway.txt and DIR/worker.txt, collapsed "
                        "stacks, summed by bench/profile_summary.py")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite",
                   help="postgres: a throwaway database on TETHER_BENCH_PG_URL's server; also "
                        "prints the CPU of its backends, commits, WAL syncs and NOTIFY notes")
    args = p.parse_args(argv)
    print(f"CPU per 1,000 runs of the 3-step function ({args.runs} runs x {args.repeats}, "
          f"batches of {args.batch}):",
          flush=True)
    results = measure(runs=args.runs, repeats=args.repeats, warmup=args.warmup,
                      batch=args.batch, concurrency=args.concurrency, profile=args.profile,
                      db_kind=args.db)
    gw = [r.gateway_ms for r in results]
    wk = [r.worker_ms for r in results]
    print(f"median: gateway {statistics.median(gw):.1f} ms, worker {statistics.median(wk):.1f} ms "
          f"per 1,000 runs (min {min(gw):.1f} / {min(wk):.1f}, max {max(gw):.1f} / {max(wk):.1f})",
          flush=True)
    pg = [r.pg.backend_cpu_s * 1e6 / args.runs for r in results if r.pg is not None]
    if pg:
        print(f"median: postgres backends {statistics.median(pg):.1f} ms per 1,000 runs",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "gateway_ms": gw, "worker_ms": wk, "wall_s": [r.wall_s for r in results],
            "postgres_ms": pg,
            "postgres": [r.pg.as_dict() for r in results if r.pg is not None]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
