"""``python -m bench dashboard``: the dashboard's pages over a store of many runs.

Writes ``--runs`` runs (default 1,000,000: 10 functions, 30 days, three steps each; mostly
Completed, some Failed, Cancelled, Queued and Sleeping) straight into a fresh SQLite database,
starts a gateway on it and times each page, one request at a time, ``--requests`` times:
the newest runs, each filter (function, status, both, a time range a month back, text and
CEL over event data), the live poll, a run, the Functions page and ``GET /v1/functions/{id}``.
The issue's bar: the runs page under 200 ms at p99 with 1,000,000 runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlencode

from bench.cluster import Cluster
from bench.throughput import _percentile
from gateway.store import migrations
from gateway.store.db import queries
from protocol.ids import new_id

FUNCTIONS = [f"bench/f{i}" for i in range(10)]
DAY = 86400.0
#: Status of the runs written, by share.
MIX = [("Completed", 0.94), ("Failed", 0.03), ("Cancelled", 0.01), ("Queued", 0.01),
       ("Sleeping", 0.01)]


def seed(path: Path, runs: int, now: float, rng: random.Random, *,
         mix: list[tuple[str, float]] = MIX, functions: list[str] = FUNCTIONS,
         ready: bool = False, days: float = 30,
         progress: Callable[[int], None] | None = None) -> list[str]:
    """Write the runs (and their events and steps); returns a few run ids to open.

    The database is created by the gateway's own migrations if new; a second call adds to
    it. Runs are spread over ``functions`` (``app/name``) and the last ``days``, with statuses
    drawn from ``mix``. Queued and Sleeping runs are due a year from ``now``, or, with
    ``ready``, Queued ones are ready since they were queued (a backlog nobody serves).
    ``progress`` is told the runs written so far after each chunk.
    """
    url = f"sqlite:///{path}"
    migrations.apply(url, "sqlite")
    q = queries("sqlite")
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    for fid in functions:
        app_id, name = fid.split("/", 1)
        db.execute(q["upsert_app"], (app_id, "1", now))
        config = {"id": name, "triggers": [{"event": f"{fid}.go"}]}
        db.execute(q["upsert_function"], (fid, app_id, json.dumps(config), now))
    first_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0] + 1
    statuses = [s for s, _ in mix]
    weights = [w for _, w in mix]
    times = sorted(now - days * DAY + rng.random() * days * DAY for _ in range(runs))
    sample: list[str] = []
    chunk = 50_000
    for start in range(0, runs, chunk):
        run_rows, events, links, steps = [], [], [], []
        for seq, ts in enumerate(times[start:start + chunk], start + first_seq):
            run_id, event_id = new_id(ts), new_id(ts)
            fid = functions[seq % len(functions)]
            status = rng.choices(statuses, weights)[0]
            ended = ts + 0.05 if status in ("Completed", "Failed", "Cancelled") else None
            later = now + 365 * DAY if status in ("Queued", "Sleeping") else None
            fresh = ready and status == "Queued"  # never started: no steps yet
            if fresh:
                later = ts
            payload = json.dumps({"name": f"{fid}.go", "id": event_id, "ts": int(ts * 1000),
                                  "data": {"n": seq % 1000, "customer": f"c-{seq}"}})
            events.append((seq, event_id, f"{fid}.go", payload.encode(), ts))
            links.append((run_id, 0, seq))
            run_rows.append((run_id, fid, status, later, json.dumps([event_id]), ts,
                             None if fresh else ts + 0.01, ended,
                             b'"ok"' if status == "Completed" else None))
            for i, step in enumerate(() if fresh else ("fetch", "charge", "notify")):
                steps.append((run_id, step, "run", "Completed", 1, b"1", ts + 0.01 * i,
                              ts + 0.01 * i + 0.005))
            if (seq - first_seq + 1) % (runs // 5 or 1) == 0:
                sample.append(run_id)
        db.executemany("INSERT INTO events (seq, id, name, payload, received_at) "
                       "VALUES (?, ?, ?, ?, ?)", events)
        db.executemany("INSERT INTO run_events (run_id, position, event_seq) VALUES (?, ?, ?)",
                       links)
        db.executemany("INSERT INTO runs (id, function_id, status, available_at, event_ids, "
                       "queued_at, started_at, ended_at, output) VALUES (?, ?, ?, ?, ?, ?, ?, "
                       "?, ?)", run_rows)
        db.executemany("INSERT INTO steps (run_id, step_id, kind, status, attempts, output, "
                       "started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", steps)
        db.commit()
        if progress is not None:
            progress(min(runs, start + chunk))
    db.execute("ANALYZE")
    db.commit()
    db.close()
    return sample


def _timed(conn: http.client.HTTPConnection, path: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
        times.append(time.perf_counter() - started)
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: {answer.status}")
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench dashboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1_000_000, help="runs in the store")
    p.add_argument("--requests", type=int, default=50, help="requests of each page")
    args = p.parse_args(argv)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        cluster = Cluster(Path(tmp), gateway_args=["--log-level", "warning"])
        now = time.time()
        started = time.monotonic()
        sample = seed(Path(tmp) / "tether.db", args.runs, now, rng)
        print(f"{args.runs:,} runs written in {time.monotonic() - started:.0f} s")
        month_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 29 * DAY))
        day_after = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 28 * DAY))
        fn = FUNCTIONS[3]
        pages = [
            ("runs, newest", "/"),
            ("runs, live poll", "/?fragment=1"),
            ("runs, function", "/?" + urlencode({"function_id": fn})),
            ("runs, status Failed", "/?status=Failed"),
            ("runs, function + Failed", "/?" + urlencode({"function_id": fn,
                                                          "status": "Failed"})),
            ("runs, a day a month back", "/?" + urlencode({"from": month_ago,
                                                           "to": day_after})),
            ("runs, text (function)", "/?" + urlencode({"function_id": fn, "text": "c-99"})),
            ("runs, CEL (function)", "/?function_id=" + quote(fn) + "&if="
             + quote("event.data.n == 7")),
            ("a run", f"/runs/{sample[len(sample) // 2]}"),
            ("functions", "/functions"),
            ("GET /v1/functions/{id}", f"/v1/functions/{fn}"),
        ]
        try:
            cluster.start_gateway()
            conn = http.client.HTTPConnection("127.0.0.1", cluster.http_port, timeout=60)
            print(f"{args.requests} requests of each page, one at a time, one connection:")
            for label, path in pages:
                times = _timed(conn, path, args.requests)
                print(f"  {label:<28} p50 {sorted(times)[len(times) // 2] * 1e3:7.1f} ms, "
                      f"p99 {_percentile(times, 0.99) * 1e3:7.1f} ms", flush=True)
            conn.close()
        finally:
            cluster.stop()
    return 0
