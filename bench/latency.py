"""``python -m bench latency``: event -> run completed latency, open-loop, at fractions of the
maximum throughput.

One gateway (SQLite, or PostgreSQL with ``--db postgres``) and one worker running the 3-step
function of ``bench/app.py``. Phases, one after the other on the same processes:

* maximum throughput (unless ``--max STEPS_PER_S`` gives it): ``--max-events`` events posted
  in batches of 500 as fast as they are accepted; durable steps/s until the last run ended;
* light load: one event every ``--light-gap`` seconds, ``--light`` of them;
* one open-loop phase per ``--fractions`` entry: events at that fraction of the maximum, for
  ``--duration`` seconds, sent every ``--tick`` seconds in small batches.

Open loop, so no coordinated omission: every event's send time is fixed up front (event ``i``
of a phase at ``start + i / rate``), sender threads post each tick's events whatever the
gateway answers, and latency runs from that intended time, not from when a sender got round
to it: a stalled sender or a slow answer counts against the gateway.

Completion is read from the store afterwards (``runs.ended_at``: the gateway's wall clock
when the batch that recorded the run's end began, so the final commit's fsync is not counted;
everything before it is). Sender and gateway share the machine's wall clock.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.cluster import Cluster
from bench.cpu import cpu_seconds
from bench.throughput import (
    STEPS_PER_RUN,
    Database,
    _latencies,
    _percentile,
    _wait_completed,
    _wait_workers,
)


@dataclass
class Phase:
    """One phase's figures (latencies in ms)."""

    name: str
    offered_steps_per_s: float
    achieved_steps_per_s: float
    runs: int
    p50: float
    p90: float
    p99: float
    max: float
    late_sends_ms: float  # p99 of how late the senders posted behind the schedule
    commits_per_run: float  # write batches the gateway committed, per run of the phase
    commit_ms: float  # mean time to commit one batch (fsync included)
    hops: dict[str, float] = dataclasses.field(default_factory=dict)  # light load only
    #: CPU ms per run of the gateway and of the worker over the phase (``/proc``)
    gateway_cpu_ms: float = 0.0
    worker_cpu_ms: float = 0.0

    def line(self) -> str:
        return (f"  {self.name:<16} offered {self.offered_steps_per_s:>7,.0f} steps/s, "
                f"achieved {self.achieved_steps_per_s:>7,.0f}: p50 {self.p50:.2f} ms, "
                f"p90 {self.p90:.2f}, p99 {self.p99:.2f}, max {self.max:.2f} "
                f"({self.runs} runs, {self.commits_per_run:.2f} commits/run of "
                f"{self.commit_ms:.2f} ms; senders late p99 {self.late_sends_ms:.1f} ms; "
                f"CPU per run: gateway {self.gateway_cpu_ms:.2f} ms, worker "
                f"{self.worker_cpu_ms:.2f} ms)")


class Sender:
    """Posts batches of events on keep-alive connections, from a few threads.

    The schedule is kept by :meth:`run`, not by the threads: a batch is queued at its tick
    whether or not earlier POSTs have been answered (up to ``threads`` in flight).
    """

    def __init__(self, cluster: Cluster, threads: int = 4) -> None:
        self.port = cluster.http_port
        self.jobs: queue.Queue[tuple[list[float], bytes] | None] = queue.Queue()
        self.sent: dict[str, float] = {}
        self.late: list[float] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._post, daemon=True)
                         for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _post(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while (job := self.jobs.get()) is not None:
            intended, body = job
            late = time.time() - intended[0]
            for attempt in (1, 2):  # the server closes idle keep-alive connections: reopen
                try:
                    ids = self._request(conn, body)
                    break
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                    if attempt == 2:
                        with self._lock:
                            self.errors.append(f"{type(exc).__name__}: {exc}")
                        ids = None
            if ids is None:
                continue
            with self._lock:
                self.late.append(late)
                for event_id, t in zip(ids, intended, strict=True):
                    self.sent[event_id] = t
        conn.close()

    @staticmethod
    def _request(conn: http.client.HTTPConnection, body: bytes) -> list[str]:
        conn.request("POST", "/e/dev", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST /e: {resp.status} {raw[:200]!r}")
        ids: list[str] = json.loads(raw)["ids"]
        return ids

    def run(self, rate: float, count: int, tick: float) -> tuple[float, dict[str, float]]:
        """Send ``count`` events at ``rate`` per second; returns (start, {event id: intended})."""
        start = time.time() + 0.05
        intended = [start + i / rate for i in range(count)]
        bodies = [json.dumps({"name": "bench/go", "data": {"i": i}}).encode()
                  for i in range(count)]
        self.sent, self.late, self.errors = {}, [], []
        i = queued = 0
        next_tick = start
        while i < count:
            delay = next_tick - time.time()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            j = i
            while j < count and intended[j] <= now:
                j += 1
            if j > i:
                body = b"[" + b",".join(bodies[i:j]) + b"]"
                self.jobs.put((intended[i:j], body))
                queued += 1
                i = j
            next_tick += tick
            if next_tick < now:  # we fell behind: send what is due at once, keep the grid
                next_tick = now
        self._drain(queued)
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} POSTs failed, first: {self.errors[0]}")
        return start, dict(self.sent)

    def _drain(self, queued: int) -> None:
        """Until every queued POST has been answered (or failed): none is left out."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.late) + len(self.errors) >= queued:
                    return
            time.sleep(0.01)
        raise TimeoutError("POSTs still unanswered after 300 s")

    def close(self) -> None:
        for _ in self._threads:
            self.jobs.put(None)


_HOPS_SQL = (
    "SELECT e.id, e.received_at, r.queued_at, MIN(s.started_at), MAX(s.ended_at), r.ended_at "
    "FROM events e JOIN run_events re ON re.event_seq = e.seq JOIN runs r ON r.id = re.run_id "
    "JOIN steps s ON s.run_id = r.id WHERE r.status = 'Completed' "
    "GROUP BY e.id, e.received_at, r.queued_at, r.ended_at"
)

#: Where a run's time goes, from the timestamps the store keeps (gateway and worker clocks).
HOPS = (
    "sent -> event received (HTTP)",
    "received -> commit began (engine loop)",
    "commit began -> first step began (commit, lease, worker)",
    "first step began -> last step ended (worker)",
    "last step ended -> end's commit began (frame, engine loop)",
)


def hops(db: Database, sent: dict[str, float]) -> dict[str, float]:
    """Median ms of each of :data:`HOPS` over the runs of ``sent``."""
    spans: list[list[float]] = [[] for _ in HOPS]
    for event_id, *times in db.rows(_HOPS_SQL):
        t0 = sent.get(event_id)
        if t0 is None or None in times:
            continue
        points = [t0, *(float(t) for t in times)]
        for i in range(len(HOPS)):
            spans[i].append((points[i + 1] - points[i]) * 1000)
    return {name: statistics.median(v) if v else float("nan") for name, v in zip(HOPS, spans,
                                                                                    strict=True)}


def _commits(cluster: Cluster) -> tuple[float, float]:
    """(batches committed, seconds spent committing them) so far, from ``/metrics``."""
    found = {"tether_batches_committed_total": 0.0, "tether_commit_seconds_sum": 0.0}
    for line in cluster.get_text("/metrics").splitlines():
        name, _, value = line.partition(" ")
        if name in found:
            found[name] = float(value)
    return found["tether_batches_committed_total"], found["tether_commit_seconds_sum"]


def _completed_total(db: Database) -> int:
    return int(db.rows("SELECT COUNT(*) FROM runs WHERE status = 'Completed'")[0][0])


def _phase(name: str, db: Database, cluster: Cluster, sender: Sender, *, rate: float,
           count: int, tick: float, keep: dict[str, float] | None = None) -> Phase:
    before = _completed_total(db)
    batches, seconds = _commits(cluster)
    cpu = _cpu(cluster)
    start, sent = sender.run(rate, count, tick)
    if keep is not None:
        keep.update(sent)
    _wait_completed(cluster, before + len(sent), timeout=300)
    gateway_cpu, worker_cpu = (after - before for after, before in zip(_cpu(cluster), cpu,
                                                                        strict=True))
    batches_after, seconds_after = _commits(cluster)
    commits = max(batches_after - batches, 1.0)
    _, ends = _latencies(db, sent)
    ended = db.rows("SELECT MAX(ended_at) FROM runs")[0][0]
    ms = [e * 1000 for e in ends]
    return Phase(
        name=name, offered_steps_per_s=rate * STEPS_PER_RUN,
        achieved_steps_per_s=len(ends) * STEPS_PER_RUN / max(ended - start, 1e-9),
        runs=len(ends), p50=statistics.median(ms), p90=_percentile(ms, 0.90),
        p99=_percentile(ms, 0.99), max=max(ms),
        late_sends_ms=_percentile(sender.late, 0.99) * 1000 if sender.late else 0.0,
        commits_per_run=commits / max(len(ends), 1),
        commit_ms=(seconds_after - seconds) / commits * 1000,
        gateway_cpu_ms=gateway_cpu * 1000 / max(len(ends), 1),
        worker_cpu_ms=worker_cpu * 1000 / max(len(ends), 1))


def _cpu(cluster: Cluster) -> tuple[float, float]:
    """CPU seconds (user + system) the gateway and the workers have used so far."""
    assert cluster.gateway is not None
    return (cpu_seconds(cluster.gateway.pid),
            sum(cpu_seconds(w.pid) for w in cluster.workers))


def _max_throughput(db: Database, cluster: Cluster, events: int, batch: int = 500) -> float:
    """Durable steps/s with a backlog: events posted as fast as they are accepted."""
    before = _completed_total(db)
    chunks = [[{"name": "bench/go", "data": {"i": i}} for i in range(s, min(s + batch, events))]
              for s in range(0, events, batch)]

    def post(mine: list[list[dict[str, Any]]]) -> None:
        for chunk in mine:
            cluster.send(chunk)

    threads = [threading.Thread(target=post, args=(chunks[k::2],)) for k in range(2)]
    began = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _wait_completed(cluster, before + events, timeout=600)
    last_end = float(db.rows("SELECT MAX(ended_at) FROM runs")[0][0])
    return events * STEPS_PER_RUN / (last_end - began)


def measure(*, db_kind: str = "sqlite", max_steps: float | None = None,
            max_events: int = 9000, fractions: tuple[float, ...] = (0.5, 0.8),
            duration: float = 10.0, tick: float = 0.005, light: int = 300,
            light_gap: float = 0.01, concurrency: int = 1000, progress: bool = True
            ) -> tuple[float, list[Phase]]:
    """Run every phase; returns (maximum steps/s, phases)."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        workdir = Path(tmp)
        db = Database(db_kind, workdir)
        cluster = Cluster(workdir / "gw", db=db.url, gateway_args=["--log-level", "warning"])
        sender: Sender | None = None
        try:
            cluster.start_gateway()
            cluster.start_worker("bench.app:app", args=(
                "--concurrency", str(concurrency), "--log-level", "warning"))
            _wait_workers(cluster, 1)
            sender = Sender(cluster)
            # Warm up (imports, first registrations, SQLite caches) before anything counts.
            sender.run(200.0, 100, tick)
            _wait_completed(cluster, 100, timeout=60)
            if max_steps is None:
                if progress:
                    print(f"measuring the maximum ({max_events} events, backlog)...",
                          flush=True)
                max_steps = _max_throughput(db, cluster, max_events)
            light_sent: dict[str, float] = {}
            phases = [_phase("light", db, cluster, sender, rate=1 / light_gap, count=light,
                             tick=light_gap, keep=light_sent)]
            phases[0].hops = hops(db, light_sent)
            if progress:
                print(phases[-1].line(), flush=True)
            for fraction in fractions:
                rate = fraction * max_steps / STEPS_PER_RUN
                phases.append(_phase(f"{fraction:.0%} of max", db, cluster, sender,
                                     rate=rate, count=max(1, int(rate * duration)), tick=tick))
                if progress:
                    print(phases[-1].line(), flush=True)
            return max_steps, phases
        finally:
            if sender is not None:
                sender.close()
            cluster.stop()
            db.drop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--max", type=float, default=None, metavar="STEPS_PER_S",
                   help="maximum durable steps/s (default: measured first)")
    p.add_argument("--max-events", type=int, default=9000,
                   help="events of the maximum-throughput phase")
    p.add_argument("--fractions", default="0.5,0.8",
                   help="comma-separated fractions of the maximum, one phase each")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per open-loop phase")
    p.add_argument("--tick", type=float, default=0.005, help="seconds between batches")
    p.add_argument("--light", type=int, default=300, help="events of the light-load phase")
    p.add_argument("--light-gap", type=float, default=0.01,
                   help="seconds between light-load events")
    p.add_argument("--concurrency", type=int, default=1000, help="the worker's --concurrency")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the figures to PATH as JSON")
    args = p.parse_args(argv)
    fractions = tuple(float(f) for f in args.fractions.split(",") if f.strip())
    max_steps, phases = measure(
        db_kind=args.db, max_steps=args.max, max_events=args.max_events, fractions=fractions,
        duration=args.duration, tick=args.tick, light=args.light, light_gap=args.light_gap,
        concurrency=args.concurrency)
    print(f"event -> run completed, open loop, 1 gateway ({args.db}), 1 worker, "
          f"3-step function; maximum {max_steps:,.0f} steps/s"
          f"{' (given)' if args.max else ''}; batches every {args.tick * 1000:.0f} ms:")
    for phase in phases:
        print(phase.line())
    print("  light load, median ms per hop (gateway and worker timestamps in the store):")
    for name, value in phases[0].hops.items():
        print(f"    {name:<58} {value:6.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "max_steps_per_s": max_steps, "db": args.db, "tick": args.tick,
            "phases": [asdict(ph) for ph in phases]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
