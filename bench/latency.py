"""``python -m bench latency``: event -> run completed latency, open loop, at fractions of the
maximum throughput.

One gateway (SQLite, or PostgreSQL with ``--db postgres``) and one worker running the 3-step
function of ``bench/app.py``. Phases, one after the other on the same processes:

* the **batch maximum** (unless ``--max STEPS_PER_S`` gives the maximum): ``--max-events``
  events posted in batches of 500 as fast as they are accepted, durable steps/s until the
  last run ended (what ``bench throughput`` measures);
* the **open-loop maximum** (``--of open``, the default): a short search (``--probes``
  phases of ``--probe-duration`` s) for the highest rate, sent as the open-loop phases send
  (a small batch every ``--tick``), at which the gateway keeps pace: 98% of a probe's runs
  complete within 0.25 s of its last send, its p99 is at most 500 ms and runs completed at
  95% of the offered rate at least (a backlog that grows fails it);
* light load: one event every ``--light-gap`` seconds, ``--light`` of them;
* one open-loop phase per ``--fractions`` entry: events at that fraction of the maximum
  (the open-loop one, or the batch one with ``--of batch``), for ``--duration`` seconds.

Open loop, so no coordinated omission: events are sent by :mod:`bench.loadgen`, a process of
its own, on a schedule fixed before the phase starts (batch ``k`` at ``start + k * tick``),
each batch whatever the gateway has answered; latency runs from the batch's *scheduled*
time, so a late sender counts against the gateway. The sender prints how late it was and
the CPU it used, so a reader can see whether it kept up.

Completion is read from the store afterwards (``runs.ended_at``: the gateway's wall clock
when the batch that recorded the run's end began, so the final commit's fsync is not counted;
everything before it is). Sender and gateway share the machine's wall clock.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
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
from bench.loadgen import LoadGenerator, Plan, Report, intended
from bench.throughput import (
    STEPS_PER_RUN,
    Database,
    _percentile,
    _wait_workers,
)

#: A probe of the open-loop search keeps pace when this share of its runs ...
KEEP_PACE_SHARE = 0.98
#: ... completes within this many seconds of its last scheduled send (no backlog left) ...
KEEP_PACE_SLACK = 0.25
#: ... and its p99 latency is at most this many ms (no backlog on the way either) ...
KEEP_PACE_P99_MS = 500.0
#: ... and it completed runs at this share of the offered rate at least.
KEEP_PACE_ACHIEVED = 0.95


@dataclass
class Phase:
    """One phase's figures (latencies in ms, CPU in shares of one core)."""

    name: str
    offered_steps_per_s: float
    achieved_steps_per_s: float
    runs: int
    p50: float
    p90: float
    p99: float
    max: float
    late_sends_ms: float  # p99 of how late the sender posted behind the schedule
    commits_per_run: float  # write batches the gateway committed, per run of the phase
    commit_ms: float  # mean time to commit one batch (fsync included)
    hops: dict[str, float] = dataclasses.field(default_factory=dict)  # median ms per hop
    hops_p99: dict[str, float] = dataclasses.field(default_factory=dict)
    late_sends_max_ms: float = 0.0
    answer_p50_ms: float = 0.0  # POST sent -> its 200 (the events' commit included)
    answer_p99_ms: float = 0.0
    connections: int = 0  # the sender's keep-alive connections
    in_flight_max: int = 0  # POSTs awaiting an answer at once
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)  # process: core share
    #: process: time its threads were runnable but had no core, as a share of the phase
    waited: dict[str, float] = dataclasses.field(default_factory=dict)
    gateway_threads: dict[str, float] = dataclasses.field(default_factory=dict)
    kept_pace: bool = True  # see KEEP_PACE_SHARE
    commit_p99_ms: float = 0.0  # the /metrics histogram bucket holding the 99th percentile
    slow_commits: int = 0  # commits over 25 ms
    commits_busy: float = 0.0  # share of the phase's time a commit was in flight

    def line(self) -> str:
        return (f"  {self.name:<16} offered {self.offered_steps_per_s:>7,.0f} steps/s, "
                f"achieved {self.achieved_steps_per_s:>7,.0f}: p50 {self.p50:.2f} ms, "
                f"p90 {self.p90:.2f}, p99 {self.p99:.2f}, max {self.max:.2f} "
                f"({self.runs} runs, {self.commits_per_run:.2f} commits/run of "
                f"{self.commit_ms:.2f} ms, p99 <= {self.commit_p99_ms:g} ms, "
                f"{self.slow_commits} over 25 ms, committing {self.commits_busy:.0%} of the "
                "time)")

    def detail_lines(self) -> str:
        """The sender's figures, each process's CPU, and the gateway's threads."""
        cpu = ", ".join(f"{name} {share:.0%} (+{self.waited.get(name, 0.0):.0%} waiting)"
                        for name, share in self.cpu.items())
        threads = ", ".join(f"{name} {share:.0%}" for name, share in
                            self.gateway_threads.items())
        return (f"  {'':<16} sender late p99 {self.late_sends_ms:.2f} ms, max "
                f"{self.late_sends_max_ms:.2f}; POST answered p50 {self.answer_p50_ms:.2f} / "
                f"p99 {self.answer_p99_ms:.2f} ms; {self.connections} connections, "
                f"{self.in_flight_max} in flight at most; CPU of a core (+ runnable without one): "
                f"{cpu}\n  {'':<16} gateway threads (share of the phase): {threads}")


_HOPS_SQL = (
    "SELECT e.id, e.received_at, MIN(s.started_at), MAX(s.ended_at), r.ended_at "
    "FROM events e JOIN run_events re ON re.event_seq = e.seq JOIN runs r ON r.id = re.run_id "
    "JOIN steps s ON s.run_id = r.id WHERE r.status = 'Completed' AND e.seq > {after} "
    "GROUP BY e.id, e.received_at, r.ended_at"
)

#: Where a run's time goes, from the timestamps the store keeps (gateway and worker clocks).
#: An event's ``received_at`` is the start of the commit that stores it, so the first hop is
#: the POST's way in *and* its wait for the commit in flight to end.
HOPS = (
    "sent -> its commit began (HTTP, commit in flight)",
    "commit began -> first step began (commit, lease, worker)",
    "first step began -> last step ended (worker)",
    "last step ended -> end's commit began (frame, commit in flight)",
)


def hops(db: Database, sent: dict[str, float], after: int = 0, q: float = 0.5
         ) -> dict[str, float]:
    """The ``q`` quantile (median by default) of each of :data:`HOPS`, in ms, over the runs
    of ``sent`` (events stored after seq ``after``)."""
    spans: list[list[float]] = [[] for _ in HOPS]
    for event_id, *times in db.rows(_HOPS_SQL.format(after=int(after))):
        t0 = sent.get(event_id)
        if t0 is None or None in times:
            continue
        points = [t0, *(float(t) for t in times)]
        for i in range(len(HOPS)):
            spans[i].append((points[i + 1] - points[i]) * 1000)
    return {name: _percentile(v, q) if v else float("nan")
            for name, v in zip(HOPS, spans, strict=True)}


@dataclass(frozen=True)
class Commits:
    """The gateway's commit counters at one moment, from ``/metrics``."""

    batches: float
    seconds: float
    buckets: dict[float, float]  # upper bound (s): commits that took at most that long

    @classmethod
    def read(cls, cluster: Cluster) -> Commits:
        found = {"tether_batches_committed_total": 0.0, "tether_commit_seconds_sum": 0.0}
        buckets: dict[float, float] = {}
        for line in cluster.get_text("/metrics").splitlines():
            name, _, value = line.rpartition(" ")
            if name in found:
                found[name] = float(value)
            elif name.startswith('tether_commit_seconds_bucket{le="'):
                buckets[float(name.split('"')[1])] = float(value)
        return cls(found["tether_batches_committed_total"],
                   found["tether_commit_seconds_sum"], buckets)

    def since(self, before: Commits) -> tuple[float, float, float, float]:
        """(commits, mean ms, p99 ms as its histogram bucket's bound, commits over 25 ms)."""
        commits = max(self.batches - before.batches, 1.0)
        mean = (self.seconds - before.seconds) / commits * 1000
        p99 = float("inf")
        for bound in sorted(self.buckets):
            if self.buckets[bound] - before.buckets.get(bound, 0.0) >= 0.99 * commits:
                p99 = bound * 1000
                break
        under = self.buckets.get(0.025, 0.0) - before.buckets.get(0.025, 0.0)
        return commits, mean, p99, commits - under


def thread_times(pid: int) -> dict[int, tuple[float, float]]:
    """Per thread of a process: (seconds on a core, seconds runnable but waiting for one),
    from ``/proc/PID/task/TID/schedstat``; empty once it is gone."""
    times: dict[int, tuple[float, float]] = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            on_cpu, waiting = stat.read_text().split()[:2]
        except (OSError, ValueError):  # a thread that just ended
            continue
        times[int(stat.parent.name)] = (int(on_cpu) / 1e9, int(waiting) / 1e9)
    return times


def waiting_seconds(pid: int) -> float:
    """Seconds the threads of a process have spent runnable but waiting for a core."""
    return sum(waiting for _, waiting in thread_times(pid).values())


def gateway_threads(pid: int, before: dict[int, tuple[float, float]], seconds: float
                    ) -> dict[str, float]:
    """Shares of ``seconds`` the gateway's event-loop thread and its other threads (the
    store's writer, mostly) spent on a core and waiting for one, since ``before``."""
    out = {"loop cpu": 0.0, "loop waiting": 0.0, "others cpu": 0.0, "others waiting": 0.0}
    for tid, (on_cpu, waiting) in thread_times(pid).items():
        cpu0, wait0 = before.get(tid, (0.0, 0.0))
        who = "loop" if tid == pid else "others"
        out[f"{who} cpu"] += (on_cpu - cpu0) / seconds
        out[f"{who} waiting"] += (waiting - wait0) / seconds
    return out


def _completed_total(db: Database) -> int:
    return int(db.rows("SELECT COUNT(*) FROM runs WHERE status = 'Completed'")[0][0])


def _last_seq(db: Database) -> int:
    return int(db.rows("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0])


def _ended(db: Database, sent: dict[str, float], after: int) -> dict[str, float]:
    """When the run of each event of ``sent`` (stored after seq ``after``) ended."""
    rows = db.rows("SELECT e.id, r.ended_at FROM events e JOIN run_events re "
                   "ON re.event_seq = e.seq JOIN runs r ON r.id = re.run_id "
                   f"WHERE r.status = 'Completed' AND e.seq > {int(after)}")
    return {event_id: float(ended) for event_id, ended in rows if event_id in sent}


def _wait_completed(db: Database, target: int, timeout: float) -> None:
    """Until ``target`` runs completed, read from the store (the gateway is not asked)."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while (done := _completed_total(db)) < target:
        if done != last:
            last, last_change = done, time.monotonic()
        if time.monotonic() > deadline or time.monotonic() - last_change > 30:
            raise TimeoutError(f"only {done} of {target} runs completed")
        time.sleep(0.1)


@dataclass
class Bench:
    """The processes every phase runs on."""

    db: Database
    cluster: Cluster
    sender: LoadGenerator
    tick: float
    phases: int = 0

    def pids(self) -> dict[str, int]:
        pids = {"sender": self.sender.process.pid or 0}
        if self.cluster.gateway is not None:
            pids["gateway"] = self.cluster.gateway.pid
        for i, worker in enumerate(self.cluster.workers):
            pids["worker" if i == 0 else f"worker{i}"] = worker.pid
        return pids

    def send(self, rate: float, count: int, tick: float) -> tuple[Plan, Report]:
        self.phases += 1
        plan = Plan(port=self.cluster.http_port, rate=rate, count=count, tick=tick,
                    start=time.time() + 0.2, prefix=f"p{self.phases}")
        report = self.sender.run(plan)
        if report.errors:
            raise RuntimeError(f"{len(report.errors)} POSTs failed, first: {report.errors[0]}")
        return plan, report

    def phase(self, name: str, *, rate: float, count: int, tick: float,
              with_hops: bool = True) -> Phase:
        before = _completed_total(self.db)
        after = _last_seq(self.db)
        commits_before = Commits.read(self.cluster)
        pids = self.pids()
        cpu_before = {k: cpu_seconds(pid) for k, pid in pids.items()}
        waits_before = {k: waiting_seconds(pid) for k, pid in pids.items()}
        threads_before = thread_times(pids.get("gateway", 0))
        plan, report = self.send(rate, count, tick)
        sent = intended(plan)
        _wait_completed(self.db, before + len(sent), timeout=300)
        elapsed = max(time.time() - plan.start, 1e-9)  # until the last run ended, about
        cpu = {k: (cpu_seconds(pid) - cpu_before[k]) / elapsed for k, pid in pids.items()}
        waited = {k: (waiting_seconds(pid) - waits_before[k]) / elapsed
                  for k, pid in pids.items()}
        threads = gateway_threads(pids.get("gateway", 0), threads_before, elapsed)
        commits, commit_ms, commit_p99, slow = Commits.read(self.cluster).since(commits_before)
        ended_at = _ended(self.db, sent, after)
        ms = [(ended_at[event_id] - t0) * 1000 for event_id, t0 in sent.items()
              if event_id in ended_at]
        ended = max(ended_at.values())
        last_due = max(sent.values())
        in_time = sum(1 for e in ended_at.values() if e <= last_due + KEEP_PACE_SLACK)
        achieved = len(ms) * STEPS_PER_RUN / max(ended - plan.start, 1e-9)
        return Phase(
            name=name, offered_steps_per_s=rate * STEPS_PER_RUN,
            achieved_steps_per_s=achieved,
            runs=len(ms), p50=statistics.median(ms), p90=_percentile(ms, 0.90),
            p99=_percentile(ms, 0.99), max=max(ms),
            late_sends_ms=_percentile(report.late, 0.99) * 1000,
            late_sends_max_ms=max(report.late) * 1000,
            answer_p50_ms=_percentile(report.answered, 0.5) * 1000,
            answer_p99_ms=_percentile(report.answered, 0.99) * 1000,
            connections=report.connections, in_flight_max=report.max_in_flight, cpu=cpu,
            waited=waited, gateway_threads=threads,
            commits_per_run=commits / max(len(ms), 1),
            commit_ms=commit_ms, commit_p99_ms=commit_p99, slow_commits=int(slow),
            commits_busy=commits * commit_ms / 1000 / max(ended - plan.start, 1e-9),
            hops=hops(self.db, sent, after) if with_hops else {},
            hops_p99=hops(self.db, sent, after, 0.99) if with_hops else {},
            kept_pace=(in_time >= KEEP_PACE_SHARE * len(sent)
                       and _percentile(ms, 0.99) <= KEEP_PACE_P99_MS
                       and achieved >= KEEP_PACE_ACHIEVED * rate * STEPS_PER_RUN))


def batch_maximum(bench: Bench, events: int, batch: int = 500) -> float:
    """Durable steps/s with a backlog: events posted in batches of ``batch`` as fast as they
    are accepted (as ``bench throughput`` does)."""
    db, cluster = bench.db, bench.cluster
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
    _wait_completed(db, before + events, timeout=600)
    last_end = float(db.rows("SELECT MAX(ended_at) FROM runs")[0][0])
    return events * STEPS_PER_RUN / (last_end - began)


def open_loop_maximum(bench: Bench, ceiling: float, *, probes: int, duration: float,
                      progress: bool = True) -> tuple[float, list[Phase]]:
    """The highest steps/s, sent open loop a batch every tick, at which the gateway keeps
    pace (:attr:`Phase.kept_pace`): a bisection of ``probes`` phases of ``duration`` s
    between a tenth of ``ceiling`` and ``ceiling``. Returns (that rate, the probes)."""
    low, high = 0.1 * ceiling, ceiling
    rate = 0.5 * ceiling
    found: list[Phase] = []
    for _ in range(probes):
        events = rate / STEPS_PER_RUN
        probe = bench.phase(f"probe {rate:,.0f}", rate=events,
                            count=max(1, int(events * duration)), tick=bench.tick,
                            with_hops=False)
        found.append(probe)
        if progress:
            print(f"{probe.line()} -> {'keeps pace' if probe.kept_pace else 'falls behind'}",
                  flush=True)
        if probe.kept_pace:
            low = rate
        else:
            high = rate
        rate = (low + high) / 2
    return low, found


def measure(*, db_kind: str = "sqlite", max_steps: float | None = None,
            max_events: int = 9000, fractions: tuple[float, ...] = (0.5, 0.8),
            of: str = "open", probes: int = 5, probe_duration: float = 4.0,
            duration: float = 10.0, tick: float = 0.005, light: int = 300,
            light_gap: float = 0.01, concurrency: int = 1000, sender_nice: int = -5,
            progress: bool = True) -> dict[str, Any]:
    """Run every phase; returns the figures (see :func:`main` for their printing)."""
    figures: dict[str, Any] = {"db": db_kind, "tick": tick, "of": of,
                               "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        workdir = Path(tmp)
        db = Database(db_kind, workdir)
        cluster = Cluster(workdir / "gw", db=db.url, gateway_args=["--log-level", "warning"])
        sender: LoadGenerator | None = None
        try:
            cluster.start_gateway()
            cluster.start_worker("bench.app:app", args=(
                "--concurrency", str(concurrency), "--log-level", "warning"))
            _wait_workers(cluster, 1)
            sender = LoadGenerator(nice=sender_nice)
            figures["sender_nice"] = sender.niceness
            bench = Bench(db, cluster, sender, tick)
            # Warm up (imports, first registrations, SQLite caches) before anything counts.
            bench.phase("warm-up", rate=200.0, count=100, tick=tick, with_hops=False)
            batch_max = open_max = None
            if max_steps is None:
                if progress:
                    print(f"measuring the batch maximum ({max_events} events, backlog)...",
                          flush=True)
                batch_max = batch_maximum(bench, max_events)
                if progress:
                    print(f"  batch maximum {batch_max:,.0f} steps/s", flush=True)
                if of == "open":
                    if progress:
                        print(f"searching the open-loop maximum ({probes} probes of "
                              f"{probe_duration:g} s)...", flush=True)
                    open_max, probed = open_loop_maximum(
                        bench, batch_max, probes=probes, duration=probe_duration,
                        progress=progress)
                    figures["probes"] = [asdict(p) for p in probed]
                    if progress:
                        print(f"  open-loop maximum {open_max:,.0f} steps/s", flush=True)
                max_steps = open_max if of == "open" else batch_max
            assert max_steps is not None
            figures.update(max_steps_per_s=max_steps, batch_max_steps_per_s=batch_max,
                           open_max_steps_per_s=open_max)
            phases = [bench.phase("light", rate=1 / light_gap, count=light, tick=light_gap)]
            if progress:
                print(phases[-1].line(), flush=True)
            for fraction in fractions:
                rate = fraction * max_steps / STEPS_PER_RUN
                phases.append(bench.phase(f"{fraction:.0%} of max", rate=rate,
                                          count=max(1, int(rate * duration)), tick=tick))
                if progress:
                    print(phases[-1].line(), flush=True)
            figures["phases"] = [asdict(ph) for ph in phases]
            figures["load_average_after"] = os.getloadavg()
            return figures
        finally:
            if sender is not None:
                sender.close()
            cluster.stop()
            db.drop()


def render(figures: dict[str, Any], given: bool) -> str:
    """The figures as the bench prints them."""
    batch, opened = figures["batch_max_steps_per_s"], figures["open_max_steps_per_s"]
    if given:
        source = "given"
    elif figures["of"] == "open":
        source = f"open-loop maximum; batch maximum {batch:,.0f}"
    else:
        source = "batch maximum"
    load = "/".join(f"{x:.1f}" for x in (*figures["load_average_before"][:1],
                                         *figures["load_average_after"][:1]))
    lines = [f"event -> run completed, open loop, 1 gateway ({figures['db']}), 1 worker, "
             f"3-step function; maximum {figures['max_steps_per_s']:,.0f} steps/s ({source}); "
             f"batches every {figures['tick'] * 1000:g} ms; sender at nice "
             f"{figures['sender_nice']}; load average before/after {load}:"]
    if opened is not None and batch:
        lines.append(f"  (the open-loop maximum is {opened / batch:.0%} of the batch maximum)")
    phases = [Phase(**ph) for ph in figures["phases"]]
    for phase in phases:
        lines += [phase.line(), phase.detail_lines()]
    lines.append("  median / p99 ms per hop (gateway and worker timestamps in the store):")
    lines.append(f"    {'':<58} " + "".join(f"{ph.name:>18}" for ph in phases))
    for name in HOPS:
        lines.append(f"    {name:<58} " + "".join(
            f"{ph.hops.get(name, float('nan')):>9.2f}/{ph.hops_p99.get(name, float('nan')):<8.1f}"
            for ph in phases))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--max", type=float, default=None, metavar="STEPS_PER_S",
                   help="the maximum durable steps/s the fractions are of (default: measured)")
    p.add_argument("--of", choices=["open", "batch"], default="open",
                   help="which measured maximum the fractions are of: the open-loop one "
                        "(searched) or the batch one (default: open)")
    p.add_argument("--max-events", type=int, default=9000,
                   help="events of the batch-maximum phase")
    p.add_argument("--probes", type=int, default=5, help="phases of the open-loop search")
    p.add_argument("--probe-duration", type=float, default=4.0,
                   help="seconds per probe of the open-loop search")
    p.add_argument("--fractions", default="0.5,0.8",
                   help="comma-separated fractions of the maximum, one phase each")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per open-loop phase")
    p.add_argument("--tick", type=float, default=0.005,
                   help="seconds between batches (0: each event alone, at its own time)")
    p.add_argument("--light", type=int, default=300, help="events of the light-load phase")
    p.add_argument("--light-gap", type=float, default=0.01,
                   help="seconds between light-load events")
    p.add_argument("--concurrency", type=int, default=1000, help="the worker's --concurrency")
    p.add_argument("--sender-nice", type=int, default=-5,
                   help="the sender process's niceness (negative needs root; 0: as others)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the figures to PATH as JSON")
    args = p.parse_args(argv)
    fractions = tuple(float(f) for f in args.fractions.split(",") if f.strip())
    figures = measure(
        db_kind=args.db, max_steps=args.max, max_events=args.max_events, fractions=fractions,
        of=args.of, probes=args.probes, probe_duration=args.probe_duration,
        duration=args.duration, tick=args.tick, light=args.light, light_gap=args.light_gap,
        concurrency=args.concurrency, sender_nice=args.sender_nice)
    print(render(figures, given=args.max is not None))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
