"""``python -m bench.rows``: CPU per run of the store's per-run writes, without a gateway.

The statements the write transaction runs for each run of the 3-step function, with the
store's own named queries, on a fresh migrated store: the run created (``insert_event``,
``insert_run``, ``insert_run_event``), leased (``lease_run``), its three steps recorded
(``upsert_step``) and its end (``finish_run``, ``delete_waits``), ``--batch`` runs per
transaction as a gateway under load batches them. By default a run's steps and end come in
one batch (its progress folded into its end); ``--apart`` gives each step its own batch, with
``run_progressed``, as when steps take longer than a commit.

SQLite: the thread CPU time of each statement, per run (the writer thread's share of the
gateway's CPU), written as the store's writer writes them (``SQLiteDb``: writes staged, a
batch's leases by session, a step's attempts), with the reads the transaction runs before
them (``recent_event_ids``, ``reserve_event_seqs``, ``checkpoint_runs``). ``--against
CHECKOUT`` runs the same on a second store with another checkout's migrations and queries
(each row one statement, as SQLiteDb wrote before it staged), every transaction on both in
turn, so a swing of the machine hits both alike: ``python -m bench.rows --against
/work/wt/base``. PostgreSQL (``--db postgres``, a throwaway database on
``TETHER_BENCH_PG_URL``'s server): the backend's CPU per run, read from ``/proc`` (the server
runs on this machine), in total and per statement, and how many of the updates of ``runs``
were HOT; ``--fillfactor``
sets the table's before the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from yoyo import get_backend, read_migrations

from bench.cpu import cpu_seconds
from gateway.store import migrations
from gateway.store.db import _PARAMETER, _named
from gateway.store.sqlite import SQLiteDb
from protocol.ids import new_id

FUNCTION = "bench/three-steps"
STEPS = ("one", "two", "three")
Statement = tuple[str, list[tuple[Any, ...]]]


def batches(runs: int, size: int, *, apart: bool,
            folded: bool = True) -> Iterator[list[Statement]]:
    """The transactions, each a list of (query name, rows), of ``runs`` runs ``size`` at a
    time: created, leased, stepped and ended. ``folded`` False: the statements of a store
    before ``finish_run`` (``run_progressed``, then ``end_run``), to compare with one."""
    seq = 0
    for first in range(0, runs, size):
        count = min(size, runs - first)
        now = time.time()
        ids = [new_id(now) for _ in range(count)]
        seqs = range(seq + 1, seq + count + 1)
        seq += count
        yield [("insert_event", [(s, f"ev-{s}", "bench/go", b'{"name":"bench/go","data":{}}',
                                  now, None) for s in seqs]),
               ("insert_run", [(run_id, FUNCTION, now, json.dumps([f"ev-{s}"]), now, None,
                                None, None, None, None, None, None)
                               for run_id, s in zip(ids, seqs, strict=True)]),
               ("insert_run_event", [(run_id, 0, s) for run_id, s in zip(ids, seqs,
                                                                           strict=True)])]
        yield [("lease_run", [("session", now, run_id, "Running") for run_id in ids])]
        if apart:
            for step in STEPS:
                yield [("upsert_step", [(run_id, step, "run", "Completed", 1, b"1", None, None,
                                         now, now) for run_id in ids]),
                       ("run_progressed", [(1, run_id, 1) for run_id in ids])]
            progress = (0, 0, 0)
        else:
            yield [("upsert_step", [(run_id, step, "run", "Completed", 1, b"1", None, None, now,
                                     now) for run_id in ids for step in STEPS])]
            progress = (len(STEPS), len(STEPS), 1)
        ending: list[Statement] = [("finish_run", [("Completed", b"6", None, now, run_id,
                                                     *progress) for run_id in ids])]
        if not folded:
            ending = [("run_progressed", [(progress[0], run_id, progress[1]) for run_id in ids
                                          ])] if not apart else []
            ending.append(("end_run", [("Completed", b"6", None, now, run_id)
                                       for run_id in ids]))
        yield [*ending, ("delete_waits", [(run_id,) for run_id in ids])]


def write(db: SQLiteDb, name: str, rows: list[tuple[Any, ...]]) -> None:
    """``db.executemany(name, rows)``, as the store's writer thread runs it: the store's own
    ways of writing (a step's attempts, a batch's leases by session), not bare statements."""
    coro = db.executemany(name, rows)
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("SQLiteDb.executemany suspended")


#: The reads the transaction runs before a batch's writes, by the batch's first write: an
#: ingest's (duplicates, seqs), a checkpoint batch's (its runs): (query, where the write's rows
#: hold the ids it reads, or None: it takes their count, more arguments).
READS: dict[str, tuple[tuple[str, int | None, tuple[Any, ...]], ...]] = {
    "insert_event": (("recent_event_ids", 1, (0.0,)), ("reserve_event_seqs", None, ())),
    "upsert_step": (("checkpoint_runs", 0, ()),), "finish_run": (("checkpoint_runs", 4, ()),),
    "end_run": (("checkpoint_runs", 4, ()),)}


class _Side:
    """One store of the comparison: this checkout's (written through SQLiteDb), or another
    checkout's schema and queries (``--against``), each row one statement, as SQLiteDb did
    before it staged writes."""

    def __init__(self, label: str, path: str, against: Path | None) -> None:
        self.label = label
        if against is None:
            migrations.apply(f"sqlite:///{path}", "sqlite")
        else:
            backend = get_backend(f"sqlite:///{path}")
            with backend.lock():
                backend.apply_migrations(backend.to_apply(read_migrations(
                    str(against / "gateway/store/migrations/sqlite"))))
        self.conn = conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # the fsync is not the statements' CPU
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA temp_store=MEMORY")
        self.db: SQLiteDb | None = None
        if against is None:
            self.db = SQLiteDb(conn, staging=True)
            self.sql = self.db.sql
        else:
            self.sql = _queries_of(against)
        self.spent: dict[str, float] = {}

    def apply(self, transaction: list[Statement]) -> None:
        conn, spent = self.conn, self.spent
        conn.execute("BEGIN IMMEDIATE")
        rows = transaction[0][1]
        for query, at, more in READS.get(transaction[0][0], ()):
            ids = json.dumps(sorted({r[at] for r in rows})) if at is not None else len(rows)
            start = time.thread_time()
            conn.execute(self.sql[query], (ids, *more)).fetchall()
            spent[query] = spent.get(query, 0.0) + time.thread_time() - start
        for name, rows in transaction:
            start = time.thread_time()
            if self.db is not None:
                write(self.db, name, rows)
            else:
                conn.executemany(self.sql[name], rows)
            spent[name] = spent.get(name, 0.0) + time.thread_time() - start
        conn.execute("COMMIT")


def _queries_of(root: Path) -> dict[str, str]:
    """Another checkout's named SQLite queries, read as this one reads its own."""
    folder = root / "gateway/store/queries"
    common = {name: _PARAMETER.sub(r"?\1", sql)
              for name, sql in _named((folder / "common.sql").read_text()).items()}
    return {**common, **_named((folder / "sqlite.sql").read_text())}


def on_sqlite(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        sides = [_Side("this", os.path.join(folder, "rows.db"), None)]
        if args.against is not None:
            sides.insert(0, _Side(args.against.name, os.path.join(folder, "against.db"),
                                  args.against))
        folded = all("finish_run" in side.sql for side in sides)
        for number, transaction in enumerate(batches(args.runs, args.batch, apart=args.apart,
                                                     folded=folded)):
            for side in (sides if number % 2 == 0 else sides[::-1]):
                side.apply(transaction)
        for side in sides:
            side.conn.close()
    print(f"SQLite, {args.runs} runs in batches of {args.batch}"
          f"{', steps apart' if args.apart else ''}"
          f"{', interleaved' if len(sides) > 1 else ''}: writer CPU µs per run")
    print(f"  {'':18} " + " ".join(f"{side.label:>10}" for side in sides))
    for name in sides[0].spent:
        print(f"  {name:18} " + " ".join(f"{side.spent.get(name, 0.0) * 1e6 / args.runs:10.2f}"
                                          for side in sides))
    totals = [sum(side.spent.values()) * 1e6 / args.runs for side in sides]
    change = f"  ({100 * (totals[-1] - totals[0]) / totals[0]:+.1f}%)" if len(sides) > 1 else ""
    print(f"  {'total':18} " + " ".join(f"{t:10.2f}" for t in totals) + change)


async def on_postgres(args: argparse.Namespace) -> None:
    import asyncpg

    from gateway.store.postgres import PgDb

    server = os.environ.get("TETHER_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"bench_rows_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{server.rsplit('/', 1)[0]}/{name}"
    try:
        await asyncio.to_thread(migrations.apply, migrations.yoyo_url(url), "postgres")
        conn = await asyncpg.connect(url)
        if args.fillfactor is not None:
            await conn.execute(f"ALTER TABLE runs SET (fillfactor = {int(args.fillfactor)})")
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        db, spent = PgDb(conn), 0.0
        each: dict[str, int] = {}
        for transaction in batches(args.runs, args.batch, apart=args.apart,
                                   folded="finish_run" in db.sql):
            start = cpu_seconds(backend)
            async with conn.transaction():
                for query, rows in transaction:
                    before = _run_ns(backend)
                    await db.executemany(query, rows)
                    each[query] = each.get(query, 0) + _run_ns(backend) - before
            spent += cpu_seconds(backend) - start
        await asyncio.sleep(0.6)  # the backend reports its table statistics every 0.5 s
        await conn.close()
        stats = await asyncpg.connect(url)
        updates, hot = await stats.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'runs'")
        fillfactor = await stats.fetchval(
            "SELECT reloptions FROM pg_class WHERE relname = 'runs'")
        await stats.close()
        print(f"PostgreSQL, {args.runs} runs in batches of {args.batch}"
              f"{', steps apart' if args.apart else ''}, runs {fillfactor or 'fillfactor=100'}:"
              f" backend CPU {spent * 1e6 / args.runs:.0f} µs per run, {updates} updates of"
              f" runs, {hot} HOT")
        for query, ns in each.items():
            print(f"  {query:18} {ns / 1e3 / args.runs:6.1f}")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _run_ns(pid: int) -> int:
    """CPU time a process has run, in ns (``/proc/PID/schedstat``: finer than the clock
    ticks of ``/proc/PID/stat``, so one statement's share can be read)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rows", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--runs", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=500, help="runs per transaction")
    parser.add_argument("--apart", action="store_true",
                        help="each step in its own batch (run_progressed), then the end")
    parser.add_argument("--against", type=Path, default=None, metavar="CHECKOUT",
                        help="sqlite: interleave with another checkout's schema and queries "
                             "(e.g. /work/wt/base), each row one statement")
    parser.add_argument("--fillfactor", type=int, default=None,
                        help="postgres: set the runs table's fillfactor first")
    args = parser.parse_args(argv)
    if args.db == "sqlite":
        on_sqlite(args)
    else:
        asyncio.run(on_postgres(args))


if __name__ == "__main__":
    main()
