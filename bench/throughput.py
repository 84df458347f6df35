"""``python -m bench throughput``: events through real gateway and worker processes on loopback.

Two phases against one gateway (SQLite) and ``--workers`` worker processes:

* light load: ``--light`` events sent one at a time, ``--gap`` apart: event -> run start and
  event -> run completed latency when nothing queues;
* throughput: ``--events`` events posted in batches of ``--batch`` by ``--senders`` threads as
  fast as they are accepted: events/s, durable steps/s and the same latencies under load.

Latencies run from the moment the client sent the event to the first step's start (on the
worker) and to the commit batch that recorded the run's completion (on the gateway). The
gateway's peak RSS is its VmHWM at the end.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.cluster import Cluster

STEPS_PER_RUN = 3


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
    for line in cluster.get_text("/metrics").splitlines():
        if line.startswith("tether_runs_completed_total"):
            return int(float(line.split()[1]))
    return 0


def _wait_completed(cluster: Cluster, target: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while True:
        done = _completed(cluster)
        if done >= target:
            return
        if done != last:
            last, last_change = done, time.monotonic()
        if time.monotonic() > deadline or time.monotonic() - last_change > 30:
            raise TimeoutError(f"only {done} of {target} runs completed")
        time.sleep(0.05)


def _latencies(db: Path, sent: dict[str, float]) -> tuple[list[float], list[float]]:
    """(event -> first step start, event -> run ended) in seconds, per run."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    starts, ends = [], []
    rows = conn.execute(
        "SELECT e.id, r.ended_at, (SELECT MIN(s.started_at) FROM steps s WHERE s.run_id = r.id) "
        "FROM events e JOIN run_events re ON re.event_seq = e.seq JOIN runs r ON r.id = re.run_id "
        "WHERE r.status = 'Completed'"
    )
    for event_id, ended, started in rows:
        t0 = sent.get(event_id)
        if t0 is None:
            continue
        ends.append(ended - t0)
        if started is not None:
            starts.append(started - t0)
    conn.close()
    return starts, ends


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"p50 {statistics.median(values) * 1000:.2f} ms, "
            f"p99 {_percentile(values, 0.99) * 1000:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20000, help="events in the throughput phase")
    p.add_argument("--batch", type=int, default=500, help="events per POST")
    p.add_argument("--senders", type=int, default=2, help="threads posting events")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--concurrency", type=int, default=1000, help="--concurrency per worker")
    p.add_argument("--light", type=int, default=300, help="events in the light-load phase")
    p.add_argument("--gap", type=float, default=0.01, help="seconds between light-load events")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        cluster = Cluster(Path(tmp), gateway_args=["--log-level", "warning"])
        db = Path(tmp) / "tether.db"
        try:
            cluster.start_gateway()
            for i in range(args.workers):
                cluster.start_worker("bench.app:app", args=(
                    "--concurrency", str(args.concurrency), "--log-level", "warning"),
                    name=f"worker{i}")
            _wait_workers(cluster, args.workers)
            print(f"gateway + {args.workers} worker(s) on loopback, SQLite WAL "
                  f"synchronous=FULL, {STEPS_PER_RUN}-step function", flush=True)

            # Phase 1: light load.
            sent: dict[str, float] = {}
            for i in range(args.light):
                t0 = time.time()
                (event_id,) = cluster.send({"name": "bench/go", "data": {"i": i}})
                sent[event_id] = t0
                time.sleep(args.gap)
            _wait_completed(cluster, args.light, timeout=60)
            starts, ends = _latencies(db, sent)
            print(f"light load ({args.light} events, one every {args.gap * 1000:.0f} ms):")
            print(f"  event -> run start      {_ms(starts)}")
            print(f"  event -> run completed  {_ms(ends)}", flush=True)

            # Phase 2: throughput.
            heavy: dict[str, float] = {}
            lock = threading.Lock()
            batches = [
                [{"name": "bench/go", "data": {"i": i}}
                 for i in range(start, min(start + args.batch, args.events))]
                for start in range(0, args.events, args.batch)
            ]

            def sender(mine: list[list[dict[str, object]]]) -> None:
                for batch in mine:
                    t0 = time.time()
                    ids = cluster.send(batch)
                    with lock:
                        for event_id in ids:
                            heavy[event_id] = t0

            threads = [threading.Thread(target=sender, args=(batches[i::args.senders],))
                       for i in range(args.senders)]
            began = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            intake = time.time() - began
            _wait_completed(cluster, args.light + args.events, timeout=600)
            starts, ends = _latencies(db, heavy)
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            last_end = conn.execute("SELECT MAX(ended_at) FROM runs").fetchone()[0]
            conn.close()
            elapsed = last_end - began
            rss = cluster.gateway.peak_rss_kib() if cluster.gateway else 0
            print(f"throughput ({args.events} events in batches of {args.batch}, "
                  f"{args.senders} senders):")
            print(f"  events/s accepted       {args.events / intake:,.0f}")
            print(f"  runs/s completed        {args.events / elapsed:,.0f}")
            print(f"  durable steps/s         {args.events * STEPS_PER_RUN / elapsed:,.0f}")
            print(f"  event -> run start      {_ms(starts)}")
            print(f"  event -> run completed  {_ms(ends)}")
            print(f"  gateway peak RSS        {rss / 1024:.0f} MiB", flush=True)
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
