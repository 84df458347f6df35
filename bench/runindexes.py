"""``python -m bench.runindexes``: what each index of ``runs`` costs the SQLite writer per run.

The statements of ``python -m bench.rows`` (a run created, leased, its three steps, its end;
``--batch`` runs per transaction) on several stores at once, each with its own set of indexes,
**interleaved**: every transaction runs on each store in turn (the order flips every
transaction), so a swing of the machine hits every variant alike. Figures from separate runs
of ``bench.rows`` differ by more than an index costs on this machine.

A variant is ``current`` (the migrations as they are), ``0018`` (the indexes of runs before
migration 0019: ``runs_by_function``, ``runs_by_session``, ``runs_by_status`` without the
session), or ``drop:NAME[,NAME...]`` (the current store without those indexes). Prints the
writer's CPU µs per run of each variant (in all, and of ``insert_run``, ``lease_run``,
``finish_run``), its difference from the first variant, and the pages of each index of runs.

    python -m bench.runindexes 0018 current
    python -m bench.runindexes current drop:runs_by_status drop:runs_by_function_status
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time

from bench.rows import batches, write
from gateway.store import migrations
from gateway.store.sqlite import SQLiteDb

#: The indexes of runs before migration 0019, from the current ones.
BEFORE_0019 = [
    "DROP INDEX runs_by_status",
    "CREATE INDEX runs_by_function ON runs (function_id, id)",
    "CREATE INDEX runs_by_status ON runs (status, id, function_id)",
    "CREATE INDEX runs_by_session ON runs (session_id) WHERE session_id IS NOT NULL",
]


def _statements(variant: str) -> list[str]:
    if variant == "current":
        return []
    if variant == "0018":
        return BEFORE_0019
    if variant.startswith("drop:"):
        return [f"DROP INDEX {name}" for name in variant[5:].split(",")]
    raise SystemExit(f"unknown variant {variant!r}: current, 0018 or drop:NAME[,NAME...]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.runindexes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--runs", type=int, default=20_000, help="runs measured")
    parser.add_argument("--before", type=int, default=0,
                        help="runs written first, not measured (bigger indexes)")
    parser.add_argument("--batch", type=int, default=500, help="runs per transaction")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="runindexes-")
    conns: list[sqlite3.Connection] = []
    dbs: list[SQLiteDb] = []
    for i, variant in enumerate(args.variants):
        path = os.path.join(folder, f"{i}.db")
        migrations.apply(f"sqlite:///{path}", "sqlite")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # the fsync is not the statements' CPU
        conn.execute("PRAGMA cache_size=-65536")
        for statement in _statements(variant):
            conn.execute(statement)
        conns.append(conn)
        conn.execute("PRAGMA temp_store=MEMORY")
        dbs.append(SQLiteDb(conn, staging=True))
    transactions = list(batches(args.before + args.runs, args.batch, apart=False))
    first = len(list(batches(args.before, args.batch, apart=False))) if args.before else 0
    spent: list[dict[str, float]] = [{} for _ in conns]
    for number, transaction in enumerate(transactions):
        order = list(range(len(conns)))
        if number % 2:
            order.reverse()
        for i in order:
            conn = conns[i]
            conn.execute("BEGIN IMMEDIATE")
            for name, rows in transaction:
                start = time.thread_time()
                write(dbs[i], name, rows)
                if number >= first:
                    spent[i][name] = spent[i].get(name, 0.0) + time.thread_time() - start
            conn.execute("COMMIT")
    print(f"SQLite, {args.runs} runs in batches of {args.batch} after {args.before}, "
          f"interleaved: writer CPU µs per run")
    base = sum(spent[0].values())
    for variant, each, conn in zip(args.variants, spent, conns, strict=True):
        total = sum(each.values())
        parts = "  ".join(f"{name} {each[name] * 1e6 / args.runs:5.1f}"
                          for name in ("insert_run", "lease_run", "finish_run"))
        per_run, more = total * 1e6 / args.runs, (total - base) * 1e6 / args.runs
        print(f"  {variant:28} {per_run:6.1f} ({more:+5.1f})  {parts}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try:
            pages = conn.execute(
                "SELECT name, COUNT(*) FROM dbstat WHERE name IN (SELECT name FROM sqlite_master"
                " WHERE tbl_name = 'runs') GROUP BY name HAVING COUNT(*) > 1").fetchall()
        except sqlite3.OperationalError:  # built without dbstat
            pages = []
        print("    pages: " + ", ".join(f"{name} {count}" for name, count in pages))
        conn.close()


if __name__ == "__main__":
    main()
