"""``python -m bench throughput``: events through real gateway and worker processes on loopback.

Two phases against ``--gateways`` gateways (SQLite, or PostgreSQL with ``--db postgres``) and
``--workers`` worker processes per gateway:

* light load: ``--light`` events sent one at a time, ``--gap`` apart: event -> run start and
  event -> run completed latency when nothing queues;
* throughput: ``--events`` events posted in batches of ``--batch`` by ``--senders`` threads (to
  the gateways in turn) as fast as they are accepted: events/s, durable steps/s and the same
  latencies under load.

Latencies run from the moment the client sent the event to the first step's start (on the
worker) and to the commit batch that recorded the run's completion (on the gateway). The
gateways' peak RSS is their VmHWM at the end. PostgreSQL runs use a throwaway database on the
server at ``TETHER_BENCH_PG_URL`` (default: postgres on 127.0.0.1:5432), dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import bare
from bench.cluster import Cluster
from bench.cpu import cpu_seconds
from bench.pgstats import PgFigures, PgWatch

STEPS_PER_RUN = 3
PG_SERVER = os.environ.get("TETHER_BENCH_PG_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")

_LATENCY_SQL = (
    "SELECT e.id, r.ended_at, (SELECT MIN(s.started_at) FROM steps s WHERE s.run_id = r.id) "
    "FROM events e JOIN run_events re ON re.event_seq = e.seq JOIN runs r ON r.id = re.run_id "
    "WHERE r.status = 'Completed' AND e.seq > {after}"
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _wait_workers(cluster: Cluster, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(cluster.get("/v1/workers")["data"]) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("workers did not connect")
        time.sleep(0.05)


def _completed(cluster: Cluster) -> int:
    """Runs completed, summed over functions (``tether_runs_finished_total``)."""
    return sum(int(float(line.rsplit(" ", 1)[1]))
               for line in cluster.get_text(
                   "/metrics?name[]=tether_runs_finished_total").splitlines()
               if line.startswith("tether_runs_finished_total{")
               and 'status="Completed"' in line)


def _wait_completed(clusters: Cluster | list[Cluster], target: int, timeout: float) -> None:
    """Until the gateways together have completed ``target`` runs (polling their metrics)."""
    group = clusters if isinstance(clusters, list) else [clusters]
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while True:
        done = sum(_completed(c) for c in group)
        if done >= target:
            return
        if done != last:
            last, last_change = done, time.monotonic()
        if time.monotonic() > deadline or time.monotonic() - last_change > 30:
            raise TimeoutError(f"only {done} of {target} runs completed")
        time.sleep(0.05)



def pg_admin(sql: str) -> None:
    """Run one statement on the benchmark's PostgreSQL server (creating, dropping databases)."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_SERVER)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())

class Database:
    """The benchmark's database: a SQLite file, or a throwaway PostgreSQL database."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.path = workdir / "tether.db"
            self.url = f"sqlite:///{self.path}"
        else:
            self.name = f"tether_bench_{uuid.uuid4().hex[:8]}"
            self.url = PG_SERVER.rsplit("/", 1)[0] + "/" + self.name
            self._admin(f'CREATE DATABASE "{self.name}"')

    def _admin(self, sql: str) -> None:
        pg_admin(sql)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
        import asyncpg

        async def run() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.url)
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()

        return asyncio.run(run())

    def backend_pids(self) -> list[int]:
        """The PostgreSQL server processes serving this database now (none for SQLite)."""
        if self.kind == "sqlite":
            return []
        return [int(pid) for (pid,) in self.rows(
            f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.name}' "
            "AND pid <> pg_backend_pid()")]

    def drop(self) -> None:
        if self.kind == "postgres":
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@dataclass
class Figures:
    light_start: list[float]
    light_end: list[float]
    events_per_s: float
    steps_per_s: float
    load_start: list[float]
    load_end: list[float]
    peak_rss_mib: float
    #: CPU seconds the gateways, the workers and (PostgreSQL) the database's server processes
    #: spent in the throughput phase: steadier than wall time on a busy machine.
    cpu_s: float = 0.0
    #: The gateways' CPU time (user + system) over the throughput phase, per 1,000 runs.
    gateway_cpu_ms: float = 0.0
    #: With ``watch`` on PostgreSQL: what the database did in the throughput phase.
    pg: PgFigures | None = None


def _latencies(db: Database, sent: dict[str, float],
               after: int = 0) -> tuple[list[float], list[float]]:
    """(event -> first step start, event -> run ended) in seconds, per run.

    Only events stored after seq ``after`` are read (a store may hold a million older ones).
    """
    starts, ends = [], []
    for event_id, ended, started in db.rows(_LATENCY_SQL.format(after=int(after))):
        t0 = sent.get(event_id)
        if t0 is None:
            continue
        ends.append(ended - t0)
        if started is not None:
            starts.append(started - t0)
    return starts, ends


def ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"p50 {statistics.median(values) * 1000:.2f} ms, "
            f"p99 {_percentile(values, 0.99) * 1000:.2f} ms")


def measure(*, db_kind: str = "sqlite", gateways: int = 1, workers: int = 1,
            concurrency: int = 1000, events: int = 20000, batch: int = 500, senders: int = 2,
            light: int = 300, gap: float = 0.01, progress: bool = True,
            event: str = "bench/go", tenants: int = 0,
            prepare: Callable[[Database], None] | None = None, watch: bool = False) -> Figures:
    """Run both phases once and return the figures.

    ``prepare`` fills the fresh database before the gateways start (``bench state`` writes a
    million runs into it). With ``watch`` (PostgreSQL), :class:`bench.pgstats.PgWatch` watches
    the throughput phase.

    ``event`` names the function's trigger (see bench/app.py); with ``tenants``, event ``i``
    carries ``data.tenant`` ``i % tenants`` (the key of the flow-controlled functions).
    """

    def data(i: int) -> dict[str, object]:
        return {"i": i, "tenant": f"t{i % tenants}"} if tenants else {"i": i}

    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        workdir = Path(tmp)
        db = Database(db_kind, workdir)
        group = [Cluster(workdir / f"gw{i}", db=db.url, gateway_args=["--log-level", "warning"])
                 for i in range(gateways)]
        try:
            after = 0
            if prepare is not None:
                prepare(db)
                after = db.rows("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0]
            for cluster in group:
                cluster.start_gateway()
            urls = [c.connect_url for c in group]
            for i, cluster in enumerate(group):
                for j in range(workers):
                    others = [u for u in urls if u != cluster.connect_url]
                    cluster.start_worker("bench.app:app", name=f"worker{i}-{j}", args=(
                        *(a for u in others for a in ("--gateway", u)),
                        "--concurrency", str(concurrency), "--log-level", "warning"))
            for cluster in group:
                _wait_workers(cluster, workers)
            if progress:
                print(f"{gateways} gateway(s) on {db_kind}, {workers} worker(s) each, "
                      f"{STEPS_PER_RUN}-step function", flush=True)

            sent: dict[str, float] = {}
            for i in range(light):
                t0 = time.time()
                (event_id,) = group[i % gateways].send({"name": event, "data": data(i)})
                sent[event_id] = t0
                time.sleep(gap)
            _wait_completed(group, light, timeout=60)
            light_start, light_end = _latencies(db, sent, after)

            heavy: dict[str, float] = {}
            lock = threading.Lock()
            batches = [
                [{"name": event, "data": data(i)}
                 for i in range(start, min(start + batch, events))]
                for start in range(0, events, batch)
            ]

            def sender(index: int, mine: list[list[dict[str, object]]]) -> None:
                for k, chunk in enumerate(mine):
                    t0 = time.time()
                    ids = group[(index + k) % gateways].send(chunk)
                    with lock:
                        for event_id in ids:
                            heavy[event_id] = t0

            threads = [threading.Thread(target=sender, args=(i, batches[i::senders]))
                       for i in range(senders)]
            processes = [p.pid for c in group for p in (c.gateway, *c.workers) if p]
            processes += db.backend_pids()
            cpu_before = {pid: cpu_seconds(pid) for pid in processes}
            gateway_pids = [c.gateway.pid for c in group if c.gateway]
            watcher = PgWatch(db.url) if watch and db_kind == "postgres" else None
            if watcher is not None:
                watcher.start()
            began = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            intake = time.time() - began
            _wait_completed(group, light + events, timeout=900)
            # (a process gone by now reads 0: its share is lost, never negative)
            spent = {pid: max(0.0, cpu_seconds(pid) - cpu_before.get(pid, 0.0))
                     for pid in {*processes, *db.backend_pids()}}
            pg = watcher.stop() if watcher is not None else None
            load_start, load_end = _latencies(db, heavy, after)
            last_end = db.rows(
                "SELECT MAX(r.ended_at) FROM events e JOIN run_events re ON re.event_seq = e.seq "
                f"JOIN runs r ON r.id = re.run_id WHERE e.seq > {int(after)}")[0][0]
            elapsed = last_end - began
            rss = max(c.gateway.peak_rss_kib() for c in group if c.gateway) / 1024
            return Figures(light_start, light_end, events / intake,
                           events * STEPS_PER_RUN / elapsed, load_start, load_end, rss,
                           sum(spent.values()),
                           sum(spent.get(pid, 0.0) for pid in gateway_pids) * 1e6 / events, pg)
        finally:
            for cluster in group:
                cluster.stop()
            db.drop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--gateways", type=int, default=1, help="gateways (PostgreSQL for > 1)")
    p.add_argument("--events", type=int, default=20000, help="events in the throughput phase")
    p.add_argument("--batch", type=int, default=500, help="events per POST")
    p.add_argument("--senders", type=int, default=2, help="threads posting events")
    p.add_argument("--workers", type=int, default=1, help="worker processes per gateway")
    p.add_argument("--concurrency", type=int, default=1000, help="--concurrency per worker")
    p.add_argument("--light", type=int, default=300, help="events in the light-load phase")
    p.add_argument("--gap", type=float, default=0.01, help="seconds between light-load events")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the figures here (to compare runs)")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="skip the reference pipeline (bench bare) and the ratio to it")
    args = p.parse_args(argv)
    if args.gateways > 1 and args.db == "sqlite":
        p.error("several gateways need a shared database: add --db postgres")
    f = measure(db_kind=args.db, gateways=args.gateways, workers=args.workers,
                concurrency=args.concurrency, events=args.events, batch=args.batch,
                senders=args.senders, light=args.light, gap=args.gap)
    print(f"light load ({args.light} events, one every {args.gap * 1000:.0f} ms):")
    print(f"  event -> run start      {ms(f.light_start)}")
    print(f"  event -> run completed  {ms(f.light_end)}")
    print(f"throughput ({args.events} events in batches of {args.batch}, "
          f"{args.senders} senders):")
    print(f"  events/s accepted       {f.events_per_s:,.0f}")
    print(f"  durable steps/s         {f.steps_per_s:,.0f}")
    print(f"  event -> run start      {ms(f.load_start)}")
    print(f"  event -> run completed  {ms(f.load_end)}")
    print(f"  gateway CPU per 1,000   {f.gateway_cpu_ms:,.0f} ms")
    print(f"  gateway peak RSS        {f.peak_rss_mib:.0f} MiB", flush=True)
    figures = summary(f, vars(args))
    if args.reference:
        # the same events through the floor of this machine (bench/bare.py), right after
        reference = bare.measure(events=args.events, batch=args.batch, senders=args.senders,
                                 concurrency=args.concurrency)
        figures["reference_steps_per_s"] = reference
        print(f"  reference pipeline      {reference:,.0f} steps/s (bench bare); this run "
              f"is {f.steps_per_s / reference:.2f} of it", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


def summary(f: Figures, options: dict[str, Any]) -> dict[str, Any]:
    """The figures as plain numbers (milliseconds for latencies), with the options used."""
    def pct(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        return {"p50_ms": _percentile(values, 0.5) * 1000,
                "p99_ms": _percentile(values, 0.99) * 1000}

    return {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
        "light": {"start": pct(f.light_start), "completed": pct(f.light_end)},
        "load": {"start": pct(f.load_start), "completed": pct(f.load_end)},
        "events_per_s": f.events_per_s, "steps_per_s": f.steps_per_s,
        "gateway_cpu_ms_per_1000_runs": f.gateway_cpu_ms, "cpu_s": f.cpu_s,
        "gateway_peak_rss_mib": f.peak_rss_mib,
    }


if __name__ == "__main__":
    sys.exit(main())
