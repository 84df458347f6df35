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
import os
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


#: The big store on PostgreSQL, written once by SQL (``--db postgres``), copied per measurement.
PG_TEMPLATE = "tether_state_big"

_PG_SEED = """
INSERT INTO events (seq, id, name, payload, received_at)
SELECT g, '00E' || lpad(g::text, 23, '0'), f || '.go',
       convert_to('{{"name": "' || f || '.go", "data": {{"n": ' || g % 1000 || '}}}}', 'UTF8'), t
FROM (SELECT g, {functions}[1 + g % {nfunctions}] AS f,
             {now} - {days} * 86400 + g * ({days} * 86400.0 / {count}) AS t
      FROM generate_series({first}, {first} + {count} - 1) g) s;
INSERT INTO run_events (run_id, position, event_seq)
SELECT '00R' || lpad(g::text, 23, '0'), 0, g FROM generate_series({first}, {first} + {count} - 1) g;
INSERT INTO runs (id, function_id, status, available_at, event_ids, queued_at, started_at,
                  ended_at, output)
SELECT '00R' || lpad(seq::text, 23, '0'), substr(name, 1, length(name) - 3), '{status}',
       {available}, '["' || id || '"]', received_at, {started}, {ended}, {output}
FROM events WHERE seq >= {first};
"""

_PG_STEPS = """
INSERT INTO steps (run_id, step_id, kind, status, attempts, output, started_at, ended_at)
SELECT r.id, s.step, 'run', 'Completed', 1, '\\x31'::bytea, r.queued_at, r.queued_at + 0.005
FROM runs r, (VALUES ('fetch'), ('charge'), ('notify')) s(step) WHERE r.status = 'Completed';
"""


def _pg_admin(server: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def build_postgres(server: str, completed: int, queued: int) -> float:
    """Write the big store into database :data:`PG_TEMPLATE` on ``server`` (made anew).

    Plain SQL (``generate_series``) into a database made by the gateway's migrations: the
    same runs as :func:`build`, with ids that sort before any the gateway makes.
    """
    import asyncio

    import asyncpg

    from gateway.store import migrations
    from gateway.store.db import queries

    url = server.rsplit("/", 1)[0] + "/" + PG_TEMPLATE
    began = time.monotonic()
    _pg_admin(server, f'DROP DATABASE IF EXISTS "{PG_TEMPLATE}" WITH (FORCE)')
    _pg_admin(server, f'CREATE DATABASE "{PG_TEMPLATE}"')
    migrations.apply(migrations.yoyo_url(url), "postgres")
    q = queries("postgres")
    now = time.time()

    async def fill() -> None:
        conn = await asyncpg.connect(url)
        try:
            for fid in [*COMPLETED_FUNCTIONS, IDLE_FUNCTION]:
                app_id, name = fid.split("/", 1)
                config = {"id": name, "triggers": [{"event": f"{fid}.go"}]}
                await conn.execute(q["upsert_app"], app_id, "1", now)
                await conn.execute(q["upsert_function"], fid, app_id, json.dumps(config), now)
            for label, first, count, funcs, status, available, started, ended, output, days in (
                    ("completed runs", 1, completed, COMPLETED_FUNCTIONS, "Completed", "NULL",
                     "received_at + 0.01", "received_at + 0.05", "'\\x226f6b22'::bytea", 30),
                    ("queued runs", completed + 1, queued, [IDLE_FUNCTION], "Queued",
                     "received_at", "NULL", "NULL", "NULL", 1)):
                if not count:
                    continue
                functions = "(ARRAY[" + ", ".join(f"'{f}'" for f in funcs) + "])"
                await conn.execute(_PG_SEED.format(
                    functions=functions, nfunctions=len(funcs), now=now, days=days,
                    count=count, first=first, status=status, available=available,
                    started=started, ended=ended, output=output))
                print(f"  {label}: {count:,} written ({time.monotonic() - began:.0f} s)",
                      flush=True)
            await conn.execute(_PG_STEPS)
            await conn.execute("SELECT setval('events_seq_seq', $1)", completed + queued + 1)
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    asyncio.run(fill())
    return time.monotonic() - began


def _copier(source: Path | None) -> Callable[[Path], None] | None:
    """A ``prepare`` that starts the gateway on a copy of ``source`` (None: an empty store)."""
    if source is None:
        return None

    def copy(target: Path) -> None:
        shutil.copyfile(source, target)
        # On disk before the gateway starts: else its first checkpoint's fsync writes back
        # the whole copy (a gigabyte), which the figures would charge to the big store.
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

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


def _pg_copy(db: throughput.Database) -> None:
    """The benchmark's PostgreSQL database made anew as a copy of the big store."""
    _pg_admin(throughput.PG_SERVER, f'DROP DATABASE "{db.name}" WITH (FORCE)')
    _pg_admin(throughput.PG_SERVER, f'CREATE DATABASE "{db.name}" TEMPLATE "{PG_TEMPLATE}"')


def run_all(source: Path | None, args: argparse.Namespace, big: bool) -> dict[str, Any]:
    """Every measurement against a fresh copy of the big store (``big``) or an empty one.

    On PostgreSQL only the throughput phase runs (start-up and sleeps read a SQLite file).
    """
    if args.db == "postgres":
        tp = throughput.measure(db_kind="postgres", events=args.events, light=args.light,
                                progress=False, prepare=_pg_copy if big else None)
        return _throughput_figures(tp)
    source = source if big else None
    copy = _copier(source)
    figures: dict[str, Any] = {"startup_s": startup(source)}
    tp = throughput.measure(
        events=args.events, light=args.light, progress=False,
        prepare=None if copy is None else (lambda db: copy(db.path)))
    figures.update(_throughput_figures(tp))
    if args.sleeps:
        late = sleeps.measure(runs=args.sleeps, seconds=1.0, prepare=copy)
        figures.update({
            "sleep_late_p50_ms": statistics.median(late.late_ms),
            "sleep_late_p99_ms": late.late_ms[int(0.99 * len(late.late_ms))],
            "sleep_late_max_ms": late.late_ms[-1],
            "sleep_rss_mib": late.peak_rss_mib,
        })
    return figures


def _throughput_figures(tp: throughput.Figures) -> dict[str, Any]:
    return {
        "steps_per_s": tp.steps_per_s, "events_per_s": tp.events_per_s,
        "light_start_p50_ms": statistics.median(tp.light_start) * 1e3,
        "light_start_p99_ms": throughput._percentile(tp.light_start, 0.99) * 1e3,
        "light_end_p50_ms": statistics.median(tp.light_end) * 1e3,
        "light_end_p99_ms": throughput._percentile(tp.light_end, 0.99) * 1e3,
        "load_end_p99_ms": throughput._percentile(tp.load_end, 0.99) * 1e3,
        "gateway_peak_rss_mib": tp.peak_rss_mib,
        "gateway_cpu_ms_per_1000": tp.gateway_cpu_ms,
    }


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
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite",
                   help="postgres: the throughput phase only, on the server at "
                        "TETHER_BENCH_PG_URL (the big store is database " + PG_TEMPLATE + ")")
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
        if args.db == "postgres":
            print(f"writing {args.completed:,} completed and {args.queued:,} queued runs "
                  f"into PostgreSQL database {PG_TEMPLATE}", flush=True)
            took = build_postgres(throughput.PG_SERVER, args.completed, args.queued)
            print(f"  written in {took:.0f} s", flush=True)
        elif store.exists():
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
            empties.append(run_all(store, args, big=False))
            print(f"measuring against the big store ({i + 1} of {args.repeats})", flush=True)
            bigs.append(run_all(store, args, big=True))
        if args.db == "postgres":
            _pg_admin(throughput.PG_SERVER,
                      f'DROP DATABASE IF EXISTS "{PG_TEMPLATE}" WITH (FORCE)')
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
