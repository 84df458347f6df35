"""``python -m bench peers``: the three-step workload on DBOS Transact and on Tether, same run.

The workload is bench/app.py's ``three-steps`` (an event starts a function of three trivial
durable steps) and its DBOS twin in bench/dbos_app.py (a workflow enqueued on a DBOS queue
runs three ``@DBOS.step`` calls). Each system gets the two phases of ``bench throughput``:

* light load: ``--light`` starts one at a time, ``--gap`` apart: start -> completed latency
  (Tether: event sent -> the commit that recorded the run completed; DBOS: ``enqueue`` called
  -> the workflow's ``completed_at``);
* throughput: N starts in batches of ``--batch`` from ``--senders`` threads as fast as they
  are accepted, then steps/s = 3 N / (last completion - first send), and the CPU time the
  system's processes (DBOS's process, or Tether's gateway and worker) and its database's
  PostgreSQL server processes spent meanwhile, per 1,000 runs: on a busy machine wall-clock
  figures swing with the other load, CPU per run much less.

DBOS runs in its own process (``python -m bench.dbos_app``) on PostgreSQL, in a database
``bench_dbos`` on ``TETHER_BENCH_PG_URL``'s server, dropped and created afresh each run. Its
starts come from a ``DBOSClient`` in this process, as Tether's events come from this process
over HTTP; a batch is one transaction of ``enqueue_in_transaction`` calls (Tether: one
``POST /e`` of the batch). Both systems share the machine's cores with this load generator.

DBOS's configuration, chosen for its best figures on a 2-core machine (options below):
synchronous workflows and steps (DBOS's documented form; its async steps hand every database
call to a thread anyway, and measured 20-25% slower), queue ``worker_concurrency`` 100
(unlimited would start a thread per enqueued workflow; 50 and 200 measured no better), a
system-database pool of 40 connections (80: no better), and the queue polled every 10 ms
(DBOS's default of 1 s would put ~0.5 s into every light-load latency).
Tether runs with its defaults (one gateway, one worker with ``--concurrency 1000``), on
SQLite and on PostgreSQL.

DBOS is optional: ``pip install dbos`` (or ``pip install -e '.[bench]'``). Without it this
benchmark says so and measures Tether alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.cluster import ROOT, Process
from bench.cpu import cpu_seconds
from bench.throughput import (
    PG_SERVER,
    STEPS_PER_RUN,
    _percentile,
    measure,
    pg_admin,
)

DBOS_DB = "bench_dbos"
INSTALL_HINT = ("DBOS is not installed, so only Tether is measured. To compare with it: "
                "pip install dbos   (or: pip install -e '.[bench]')")


@dataclass
class Row:
    """One system's figures: durable steps/s under load, and latency at light load (ms)."""

    system: str
    store: str
    steps_per_s: float
    light_p50_ms: float
    light_p99_ms: float
    #: CPU ms per 1,000 runs under load, of the system's own processes and its database's
    #: server processes (the load generator excluded): what a run costs, whatever the
    #: machine's other load
    cpu_ms_per_1000: float
    runs: int
    light: int


def _p(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.median(values) * 1000, _percentile(values, 0.99) * 1000


def dbos_version() -> str | None:
    """The installed DBOS version, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("dbos")
    except PackageNotFoundError:
        return None


# --- DBOS ----------------------------------------------------------------------------------


class DBOSRun:
    """A DBOS process on a fresh ``bench_dbos`` database, and a client that feeds it."""

    def __init__(self, workdir: Path, *, worker_concurrency: int, poll: float, pool: int,
                 senders: int) -> None:
        self.url = PG_SERVER.rsplit("/", 1)[0] + "/" + DBOS_DB
        pg_admin(f'DROP DATABASE IF EXISTS "{DBOS_DB}" WITH (FORCE)')
        pg_admin(f'CREATE DATABASE "{DBOS_DB}"')
        log_path = workdir / "dbos.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get(
                   "PYTHONPATH", "")) if p)}
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "bench.dbos_app", "--db", self.url,
                 "--worker-concurrency", str(worker_concurrency), "--poll", str(poll),
                 "--pool", str(pool)],
                stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env)
        self.process = Process("dbos", popen, log_path)
        try:
            self._wait_ready()
            import sqlalchemy
            from dbos import DBOSClient

            from bench.dbos_app import APP_NAME
            self.client = DBOSClient(system_database_url=self.url, application_name=APP_NAME)
            self.engine = sqlalchemy.create_engine(
                self.url.replace("postgresql://", "postgresql+psycopg://", 1),
                pool_size=senders + 1, max_overflow=0)
        except BaseException:
            self.process.stop(timeout=15)
            pg_admin(f'DROP DATABASE IF EXISTS "{DBOS_DB}" WITH (FORCE)')
            raise

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "ready" not in self.process.log().split():
            if not self.process.alive():
                raise RuntimeError(f"the DBOS process exited:\n{self.process.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the DBOS process did not start:\n{self.process.log()}")
            time.sleep(0.05)

    def options(self, workflow_id: str) -> Any:
        from dbos import EnqueueOptions

        from bench.dbos_app import APP_VERSION, QUEUE, WORKFLOW
        options: EnqueueOptions = {"workflow_name": WORKFLOW, "queue_name": QUEUE,
                                   "workflow_id": workflow_id, "app_version": APP_VERSION}
        return options

    def enqueue(self, workflow_id: str, i: int) -> None:
        self.client.enqueue(self.options(workflow_id), i)

    def enqueue_batch(self, ids: list[str], first: int) -> None:
        """One transaction that enqueues the batch (DBOS's analogue of a batch of events)."""
        with self.engine.begin() as conn:
            for k, workflow_id in enumerate(ids):
                self.client.enqueue_in_transaction(conn, self.options(workflow_id), first + k)

    def _rows(self, sql: str) -> list[Any]:
        import sqlalchemy
        with self.engine.connect() as conn:
            return list(conn.execute(sqlalchemy.text(sql)))

    def pids(self) -> list[int]:
        """The DBOS process and the PostgreSQL server processes serving its database."""
        return [self.process.pid, *(int(pid) for (pid,) in self._rows(
            f"SELECT pid FROM pg_stat_activity WHERE datname = '{DBOS_DB}' "
            "AND pid <> pg_backend_pid()"))]

    def completed(self) -> dict[str, float]:
        """Completion time (epoch seconds) of every successful workflow, by id."""
        return {wid: at / 1000 for wid, at in self._rows(
            "SELECT workflow_uuid, completed_at FROM dbos.workflow_status "
            "WHERE status = 'SUCCESS'")}

    def wait_completed(self, target: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while True:
            (done,) = self._rows("SELECT COUNT(*) FROM dbos.workflow_status "
                                 "WHERE status = 'SUCCESS'")[0]
            if done >= target:
                return
            if not self.process.alive():
                raise RuntimeError(f"the DBOS process exited:\n{self.process.log()}")
            if done != last:
                last, last_change = done, time.monotonic()
            if time.monotonic() > deadline or time.monotonic() - last_change > 30:
                raise TimeoutError(f"only {done} of {target} DBOS workflows completed")
            time.sleep(0.05)

    def close(self) -> None:
        self.client.destroy()
        self.engine.dispose()
        self.process.stop(timeout=15)
        pg_admin(f'DROP DATABASE IF EXISTS "{DBOS_DB}" WITH (FORCE)')


def measure_dbos(*, workflows: int, light: int, gap: float, batch: int, senders: int,
                 worker_concurrency: int, poll: float, pool: int, progress: bool = True) -> Row:
    """The two phases on DBOS, in a DBOS process of its own."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-dbos-") as tmp:
        run = None
        try:
            run = DBOSRun(Path(tmp), worker_concurrency=worker_concurrency, poll=poll,
                          pool=pool, senders=senders)
            if progress:
                print(f"DBOS {dbos_version()} on PostgreSQL, queue worker_concurrency "
                      f"{worker_concurrency}, polled every {poll * 1000:g} ms", flush=True)
            warm = [f"warm-{i}" for i in range(50)]
            run.enqueue_batch(warm, 0)
            run.wait_completed(len(warm), timeout=60)

            sent: dict[str, float] = {}
            for i in range(light):
                workflow_id = f"light-{i}"
                sent[workflow_id] = time.time()
                run.enqueue(workflow_id, i)
                time.sleep(gap)
            run.wait_completed(len(warm) + light, timeout=120)
            done = run.completed()
            light_lat = [done[w] - t0 for w, t0 in sent.items() if w in done]

            chunks = [[f"load-{i}" for i in range(start, min(start + batch, workflows))]
                      for start in range(0, workflows, batch)]

            def sender(mine: list[list[str]]) -> None:
                for chunk in mine:
                    run.enqueue_batch(chunk, int(chunk[0].split("-")[1]))

            threads = [threading.Thread(target=sender, args=(chunks[i::senders],))
                       for i in range(senders)]
            pids = run.pids()
            cpu_before = {pid: cpu_seconds(pid) for pid in pids}
            began = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            run.wait_completed(len(warm) + light + workflows, timeout=1800)
            cpu = sum(max(0.0, cpu_seconds(pid) - cpu_before.get(pid, 0.0))
                      for pid in {*pids, *run.pids()})
            done = run.completed()
            last = max(at for w, at in done.items() if w.startswith("load-"))
            p50, p99 = _p(light_lat)
            return Row("DBOS", "PostgreSQL", workflows * STEPS_PER_RUN / (last - began),
                       p50, p99, cpu * 1e6 / workflows, workflows, light)
        finally:
            if run is not None:
                run.close()


# --- Tether --------------------------------------------------------------------------------


def measure_tether(db_kind: str, *, events: int, light: int, gap: float, batch: int,
                   senders: int) -> Row:
    f = measure(db_kind=db_kind, events=events, light=light, gap=gap, batch=batch,
                senders=senders)
    p50, p99 = _p(f.light_end)
    return Row("Tether", "SQLite" if db_kind == "sqlite" else "PostgreSQL", f.steps_per_s,
               p50, p99, f.cpu_s * 1e6 / events, events, light)


# --- report --------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    """The figures, and each Tether row's ratio to DBOS (steps/s: higher is better for
    Tether; latency and CPU: lower is)."""
    lines = [f"{'':24}{'steps/s':>10}{'light p50':>12}{'light p99':>12}"
             f"{'CPU ms / 1,000 runs':>21}"]
    for r in rows:
        lines.append(f"{r.system + ' (' + r.store + ')':24}{r.steps_per_s:>10,.0f}"
                     f"{r.light_p50_ms:>9.1f} ms{r.light_p99_ms:>9.1f} ms"
                     f"{r.cpu_ms_per_1000:>21,.0f}")
    dbos = next((r for r in rows if r.system == "DBOS"), None)
    if dbos is not None:
        for r in rows:
            if r.system == "Tether":
                lines.append(f"{'Tether/DBOS, ' + r.store:24}"
                             f"{r.steps_per_s / dbos.steps_per_s:>9.1f}x"
                             f"{r.light_p50_ms / dbos.light_p50_ms:>11.2f}x"
                             f"{r.light_p99_ms / dbos.light_p99_ms:>11.2f}x"
                             f"{r.cpu_ms_per_1000 / dbos.cpu_ms_per_1000:>20.3f}x")
    return "\n".join(lines)


def figures(rows: list[Row], options: dict[str, Any]) -> dict[str, Any]:
    """What ``--json`` writes: the rows, the Tether/DBOS ratios and what was run."""
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d", time.gmtime()),
                           "cores": os.cpu_count(), "dbos_version": dbos_version(),
                           "options": options, "rows": [asdict(r) for r in rows]}
    dbos = next((r for r in rows if r.system == "DBOS"), None)
    if dbos is not None:
        out["ratios"] = {r.store.lower(): {
            "steps_per_s": r.steps_per_s / dbos.steps_per_s,
            "light_p50": r.light_p50_ms / dbos.light_p50_ms,
            "light_p99": r.light_p99_ms / dbos.light_p99_ms,
            "cpu_per_run": r.cpu_ms_per_1000 / dbos.cpu_ms_per_1000,
        } for r in rows if r.system == "Tether"}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workflows", type=int, default=2000,
                   help="DBOS workflows in the throughput phase")
    p.add_argument("--events", type=int, default=10000,
                   help="Tether events in the throughput phase (more than DBOS's workflows: "
                        "each system gets a few seconds at least)")
    p.add_argument("--light", type=int, default=200, help="starts in the light-load phase")
    p.add_argument("--gap", type=float, default=0.01, help="seconds between light-load starts")
    p.add_argument("--batch", type=int, default=500, help="starts per batch (POST, transaction)")
    p.add_argument("--senders", type=int, default=2, help="threads sending batches")
    p.add_argument("--worker-concurrency", type=int, default=100,
                   help="DBOS queue's worker_concurrency")
    p.add_argument("--poll", type=float, default=0.01,
                   help="DBOS queue's polling interval, seconds")
    p.add_argument("--pool", type=int, default=40, help="DBOS system database pool size")
    p.add_argument("--only", choices=["dbos", "sqlite", "postgres"], action="append",
                   help="measure only these (repeatable): DBOS, Tether on SQLite or on "
                        "PostgreSQL")
    p.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = p.parse_args(argv)
    only = set(args.only or ["dbos", "sqlite", "postgres"])

    rows: list[Row] = []
    if "dbos" in only:
        if dbos_version() is None:
            print(INSTALL_HINT, file=sys.stderr, flush=True)
        else:
            rows.append(measure_dbos(
                workflows=args.workflows, light=args.light, gap=args.gap, batch=args.batch,
                senders=args.senders, worker_concurrency=args.worker_concurrency,
                poll=args.poll, pool=args.pool))
    for kind in ("sqlite", "postgres"):
        if kind in only:
            rows.append(measure_tether(kind, events=args.events, light=args.light,
                                       gap=args.gap, batch=args.batch, senders=args.senders))
    print(f"\nthe three-step workload ({os.cpu_count()} cores shared with the load generator;"
          f" light load: {args.light} starts, one every {args.gap * 1000:g} ms):")
    print(table(rows), flush=True)
    if args.json:
        options = {k: v for k, v in vars(args).items() if k not in ("json", "only")}
        Path(args.json).write_text(json.dumps(figures(rows, options), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
