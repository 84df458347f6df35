"""The accounting itself: each counter counts (a checker that finds nothing proves nothing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.chaos.chaosapp import expected
from bench.chaos.checker import Report, check
from bench.chaos.driver import FAILED, OK, UNKNOWN, Driver, Request
from bench.chaos.store import RunRow, Snapshot, StepRow


def driver(tmp: Path, outcomes: dict[str, list[str]], effects: frozenset[str] = frozenset()
           ) -> Driver:
    d = Driver(lambda: [], tmp, 0, 1.0, lambda n: {})
    for event_id, outs in outcomes.items():
        d.events[event_id] = {"id": event_id, "name": "chaos/go",
                              "data": {"effects": event_id in effects}}
        d.history += [Request(event_id, o, None, "", 0.0) for o in outs]
    return d


def ledger(tmp: Path, *executions: tuple[Any, ...]) -> Path:
    """(run, step, nonce, start, end[, fence]) per execution; end None: it died in the body."""
    folder = tmp / "ledger"
    folder.mkdir()
    with (folder / "1.jsonl").open("w") as out:
        for run, step, nonce, start, end, *fence in executions:
            out.write(json.dumps({"e": "start", "run": run, "step": step, "x": nonce,
                                  "pid": 1, "t": start, "fence": (fence or [None])[0]})
                      + "\n")
            if end is not None:
                out.write(json.dumps({"e": "end", "x": nonce, "t": end}) + "\n")
        out.write('{"e": "sta')  # torn by a kill mid-write: skipped
    return folder


def result(run: str, step: str, nonce: str) -> dict[str, Any]:
    return {"v": expected(run, step), "x": nonce}


def flow(run: str, event: str, status: str = "Completed", output: Any = None) -> RunRow:
    return RunRow(run, "chaos/flow", status, (event,), output, None, None)


def test_a_clean_history_counts_no_violation(tmp_path: Path) -> None:
    s0 = result("r1", "s0", "a")
    snap = Snapshot([flow("r1", "e1", output={"s0": s0})],
                    [StepRow("r1", "s0", "run", "Completed", s0)], [])
    report = check(Report("t"), driver(tmp_path, {"e1": [UNKNOWN, OK]}),
                   ledger(tmp_path, ("r1", "s0", "a", 1.0, 2.0)), snap)
    assert report.violations() == {}, report.notes
    assert (report.requests, report.ok, report.unknown, report.completed) == (2, 1, 1, 1)


def test_each_broken_promise_is_counted(tmp_path: Path) -> None:
    good, stale = result("r1", "s0", "b"), result("r1", "s0", "a")
    bad_value = {"v": 0, "x": "c"}
    snap = Snapshot(
        [flow("r1", "e1", output={"s0": stale}),          # saw another result: dup commit
         flow("r2", "e2", status="Running"),               # stuck
         flow("r3", "e3", status="Failed"),
         flow("r4", "e4", output={"s0": bad_value}), flow("r5", "e4"),  # two runs, one event
         flow("r6", "e6", output={"s0": good}),            # effects never taken, no s0
         ],
        [StepRow("r1", "s0", "run", "Completed", good),
         StepRow("r4", "s0", "run", "Completed", bad_value),
         StepRow("r3", "s0", "run", "Completed", result("r3", "s0", "nobody"))],
        [("x1", {"parent": "r6"}), ("x2", {"parent": "r6"})])  # ... but sent twice
    report = check(
        Report("t"),
        driver(tmp_path, {"e1": [OK], "e2": [OK], "e3": [OK], "e4": [OK], "e5": [OK],
                          "e6": [OK], "e7": [FAILED]}, effects=frozenset({"e6"})),
        ledger(tmp_path,
               ("r1", "s0", "a", 1.0, 2.0, 1),   # ran, result lost with its worker
               ("r1", "s0", "b", 2.5, 3.0, 2),   # the committed execution
               ("r1", "s0", "c2", 4.0, None, 2),  # began after b ended: after the ack
               ("r1", "s0", "z", 4.5, 5.0, 1),   # late, but under the older lease: stale
               ("r4", "s0", "c", 1.0, 2.0)),
        snap)
    assert report.violations() == {
        "lost": 1, "dup_runs": 1, "stuck": 1, "not_completed": 1, "reexec_after_ack": 1,
        "dup_commits": 1, "missing_steps": 1, "wrong_values": 1, "unwitnessed": 1, "dup_effects": 1,
        "missing_effects": 2,
    }, report.notes
    assert (report.executions, report.reexecutions, report.stale_execs) == (5, 3, 1)
