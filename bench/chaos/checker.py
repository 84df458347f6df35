"""End-of-run accounting: history (what clients were told), ledger (what ran), store (what
was committed) joined into counters. The ones in :data:`MUST_BE_ZERO` are promises.

"Re-run after acknowledgement" is observed without trusting the gateway's timing: the step's
committed result names the execution that produced it (its nonce), and the gateway commits,
and so acknowledges, a result only after that execution has ended. An execution of the same
step that *started* after the committed one *ended* therefore either started after the commit
(the promise broken) or raced it under a newer lease, which fencing must refuse; both are
counted. Both clocks are the host's CLOCK_MONOTONIC, shared by every process on the machine.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.chaos.chaosapp import expected
from bench.chaos.driver import OK, UNKNOWN, Driver
from bench.chaos.store import Snapshot

FINAL = frozenset({"Completed", "Failed", "Cancelled", "Skipped"})
FLOW = "chaos/flow"

#: Counters that must be 0 after every loop.
MUST_BE_ZERO = ("lost", "dup_runs", "stuck", "not_completed", "reexec_after_ack",
                "dup_commits", "missing_steps", "wrong_values", "unwitnessed", "dup_effects",
                "missing_effects", "no_retry_after", "dup_ticks", "unaccepted", "early_timers")


@dataclass(frozen=True)
class Execution:
    """One step body as the ledger saw it (``end`` is None when its process died in it)."""

    run: str
    step: str
    nonce: str
    pid: int
    start: float
    end: float | None
    fence: int | None = None  # of the lease it ran under


def read_ledger(folder: Path) -> list[Execution]:
    """Every process's ledger; a torn last line (a kill mid-write) is skipped."""
    starts: dict[str, dict[str, Any]] = {}
    ends: dict[str, float] = {}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record["e"] == "start":
                starts[record["x"]] = record
            else:
                ends[record["x"]] = record["t"]
    return [Execution(r["run"], r["step"], x, r["pid"], r["t"], ends.get(x), r.get("fence"))
            for x, r in starts.items()]


@dataclass
class Report:
    """The figures of one loop."""

    name: str
    faults: int = 0
    requests: int = 0
    ok: int = 0
    unknown: int = 0
    failed: int = 0
    events: int = 0
    runs: int = 0
    completed: int = 0
    steps_committed: int = 0
    executions: int = 0
    reexecutions: int = 0
    stale_execs: int = 0  # began after the commit, under an older (fenced) lease
    lost: int = 0
    dup_runs: int = 0
    stuck: int = 0
    not_completed: int = 0
    reexec_after_ack: int = 0
    dup_commits: int = 0
    missing_steps: int = 0
    wrong_values: int = 0
    unwitnessed: int = 0
    dup_effects: int = 0
    missing_effects: int = 0
    unaccepted: int = 0  # events the API still refused a minute after the faults healed
    unavailable: int = 0  # 503 answers (the store could not commit)
    no_retry_after: int = 0  # ... without a Retry-After
    ticks: int = 0  # cron runs (the clock loops)
    dup_ticks: int = 0  # a cron tick that started more than one run
    #: A durable sleep that ended before its duration had passed (a step of the gateway's
    #: wall clock must not end the pending ones: see gateway.clock.SystemClock).
    early_timers: int = 0
    integrity: str = "n/a"
    start_s: float = 0.0  # processes up and connected
    drain_s: float = 0.0  # from the last fault healed to every run final
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    schedule: list[str] = field(default_factory=list)

    def violations(self) -> dict[str, int]:
        bad = {k: getattr(self, k) for k in MUST_BE_ZERO if getattr(self, k)}
        if self.integrity not in ("ok", "n/a"):
            bad["integrity"] = 1
        return bad

    def line(self) -> str:
        shown = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                 if f.name not in ("name", "notes", "schedule")]
        return f"{self.name}: " + " ".join(shown)


def check(report: Report, driver: Driver, ledger: Path, snap: Snapshot) -> Report:
    """Fill ``report``'s counters; ``notes`` says which run or step broke which promise."""
    note = report.notes.append
    outcomes = driver.outcomes()
    report.requests = sum(len(o) for o in outcomes.values())
    every = Counter(x for o in outcomes.values() for x in o)
    report.ok, report.unknown = every[OK], every[UNKNOWN]
    report.failed = report.requests - report.ok - report.unknown
    report.events = len(outcomes)
    for request in driver.history:
        if request.status == 503:
            report.unavailable += 1
            if not request.retry_after:
                report.no_retry_after += 1
                note(f"no_retry_after: 503 for {request.event_id}: {request.detail}")

    flows = [r for r in snap.runs if r.function_id == FLOW]
    report.runs = len(flows)
    by_event: dict[str, list[str]] = defaultdict(list)
    for run in flows:
        for event_id in run.event_ids:
            by_event[event_id].append(run.id)
    for event_id, outs in outcomes.items():
        found = len(by_event.get(event_id, []))
        if OK in outs and found == 0:
            report.lost += 1
            note(f"lost: event {event_id} was answered ok and has no run")
        if found > 1:
            report.dup_runs += found - 1
            note(f"dup_runs: event {event_id} started {by_event[event_id]}")
    for run in flows:
        if run.status not in FINAL:
            report.stuck += 1
            note(f"stuck: run {run.id} still {run.status}")
        elif run.status != "Completed":
            report.not_completed += 1
            note(f"not_completed: run {run.id} ended {run.status}")
        else:
            report.completed += 1

    executions: dict[tuple[str, str], list[Execution]] = defaultdict(list)
    for e in read_ledger(ledger):
        executions[(e.run, e.step)].append(e)
    report.executions = sum(len(v) for v in executions.values())
    report.reexecutions = sum(len(v) - 1 for v in executions.values())

    by_run = {r.id: r for r in flows}
    for step in snap.steps:
        owner = by_run.get(step.run_id)
        if owner is None or step.kind != "run" or step.status != "Completed":
            continue
        report.steps_committed += 1
        result = step.output if isinstance(step.output, dict) else {}
        if result.get("v") != expected(step.run_id, step.step_id):
            report.wrong_values += 1
            note(f"wrong_values: {step.run_id}/{step.step_id} committed {step.output!r}")
        ran = executions.get((step.run_id, step.step_id), [])
        committed = [e for e in ran if e.nonce == result.get("x")]
        if not committed:
            report.unwitnessed += 1
            note(f"unwitnessed: {step.run_id}/{step.step_id} committed {result.get('x')} "
                 "which no ledger line started")
            continue
        ended, fence = committed[0].end, committed[0].fence
        late = [e for e in ran if ended is not None and e.start > ended]
        # An older lease's execution that only began late: its process was frozen between
        # the lease check and the body (SIGSTOP), which no lease can prevent; fencing refuses
        # its result. Counted, but not a re-run after the acknowledgement.
        stale = [e for e in late if None not in (e.fence, fence) and e.fence < fence]
        report.stale_execs += len(stale)
        late = [e for e in late if e not in stale]
        if late:
            report.reexec_after_ack += len(late)
            note(f"reexec_after_ack: {step.run_id}/{step.step_id} ran again "
                 f"(pids {[e.pid for e in late]}) after its committed execution ended")
        if (owner.status == "Completed" and isinstance(owner.output, dict)
                and owner.output.get(step.step_id) != step.output):
            report.dup_commits += 1
            note(f"dup_commits: {step.run_id}/{step.step_id}: the run saw "
                 f"{owner.output.get(step.step_id)!r}, the store holds {step.output!r}")

    recorded = {(s.run_id, s.step_id) for s in snap.steps if s.status == "Completed"}
    for run in flows:
        if run.status == "Completed" and isinstance(run.output, dict):
            gone = [k for k in run.output if k.startswith("s") and (run.id, k) not in recorded]
            if gone:
                report.missing_steps += len(gone)
                note(f"missing_steps: run {run.id} completed, but no result of {gone} "
                     "was recorded")

    ticks = Counter(r.output for r in snap.runs if r.function_id == "chaos-clock/tick")
    report.ticks = sum(ticks.values())
    for at, n in ticks.items():
        if n > 1:
            report.dup_ticks += n - 1
            note(f"dup_ticks: the tick {at} started {n} runs")
    naps = {e["id"]: float(e["data"].get("nap") or 0) for e in driver.events.values()}
    ran = {e.nonce: e for es in executions.values() for e in es}
    for run in flows:
        nap = max((naps.get(i, 0.0) for i in run.event_ids), default=0.0)
        if not nap or run.status != "Completed" or not isinstance(run.output, dict):
            continue
        before, after = (ran.get(str((run.output.get(k) or {}).get("x"))) for k in ("s0", "s1"))
        if before is not None and after is not None and before.end is not None and (
                after.start - before.end < nap):
            report.early_timers += 1
            note(f"early_timers: run {run.id} slept {after.start - before.end:.3f} s of {nap}")

    sent_runs = Counter(r.output for r in snap.runs
                        if r.function_id == "chaos/sent" and r.status == "Completed")
    sent_events = Counter(json.dumps(d.get("parent")) if isinstance(d, dict) else None
                          for _, d in {i: d for i, d in snap.sent}.items())
    children = Counter(r.parent_run_id for r in snap.runs if r.function_id == "chaos/invoked")
    effects = {e["id"] for e in driver.events.values() if e["data"].get("effects")}
    for parent in flows:
        if not any(i in effects for i in parent.event_ids):
            continue
        counts = (sent_events[json.dumps(parent.id)], children[parent.id])
        for what, n in zip(("send_event", "invoke"), counts, strict=True):
            if n > 1:
                report.dup_effects += n - 1
                note(f"dup_effects: run {parent.id}: {what} took effect {n} times")
            elif n == 0 and parent.status == "Completed":
                report.missing_effects += 1
                note(f"missing_effects: run {parent.id} completed without its {what}")
        if parent.status == "Completed" and sent_runs[parent.id] != 1:
            report.dup_effects += max(0, sent_runs[parent.id] - 1)
            if sent_runs[parent.id] == 0:
                report.missing_effects += 1
                note(f"missing_effects: the event run {parent.id} sent started no completed run")
    return report
