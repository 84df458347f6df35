"""Support for the step-API end-to-end tests: user apps as files, marks, go-files, waits.

User apps are written into the cluster's workdir (which is on the workers' PYTHONPATH).
They import :data:`MARKS_MODULE` (``stepmarks``), whose ``mark`` appends one line per call
to ``marks/NAME`` (so a test counts how often a step really ran) and whose ``block`` writes
a ``started`` mark and then waits for ``marks/NAME.go`` (so a test pauses a step mid-way
without guessing timings). Every wait is bounded and failures carry every process's log.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from bench.cluster import Cluster, Process
from tests.helpers.waiting import wait_until

T = TypeVar("T")

MARKS_MODULE = '''
"""Side-effect counters for e2e tests: one line per call, in files the test reads."""
import os
import time
from pathlib import Path

MARKS = Path(__file__).resolve().parent / "marks"
MARKS.mkdir(exist_ok=True)


def mark(name, line="x"):
    with open(MARKS / name, "a") as f:
        f.write(f"{line}\\n")
        f.flush()
        os.fsync(f.fileno())
    return line


def block(name, limit=60.0):
    """Mark ``name`` started, then wait for the test to create NAME.go (or ALL.go)."""
    mark(name, f"started {os.getpid()}")
    deadline = time.monotonic() + limit
    while not (MARKS / f"{name}.go").exists() and not (MARKS / "ALL.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}.go never appeared")
        time.sleep(0.01)
    mark(name, f"released {os.getpid()}")
    return os.getpid()
'''


class Steps:
    """A :class:`Cluster` plus the files and waits the step-API scenarios need."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.marks_dir = cluster.workdir / "marks"
        self.marks_dir.mkdir(parents=True, exist_ok=True)
        (cluster.workdir / "stepmarks.py").write_text(MARKS_MODULE)

    # --- files -------------------------------------------------------------------------

    def write_app(self, module: str, source: str) -> str:
        """Write ``module.py`` into the workdir; returns ``"module:app"``."""
        (self.cluster.workdir / f"{module}.py").write_text(textwrap.dedent(source))
        return f"{module}:app"

    def marks(self, name: str) -> list[str]:
        path = self.marks_dir / name
        return path.read_text().splitlines() if path.exists() else []

    def count(self, name: str, line: str | None = None) -> int:
        lines = self.marks(name)
        if line is None:
            return len(lines)
        return sum(1 for x in lines if x == line or x.startswith(f"{line} "))

    def go(self, name: str) -> None:
        (self.marks_dir / f"{name}.go").touch()

    def release_all(self) -> None:
        (self.marks_dir / "ALL.go").touch()

    # --- processes ---------------------------------------------------------------------

    def start_gateway(self, *args: str) -> Process:
        return self.cluster.start_gateway(*args)

    def start_worker(self, *specs: str, name: str = "worker", concurrency: int = 10
                     ) -> Process:
        """A worker, and wait until the gateway lists it (its functions are registered)."""
        before = {w["session_id"] for w in self.cluster.get("/v1/workers")["data"]}
        process = self.cluster.start_worker(
            *specs, name=name,
            args=("--concurrency", str(concurrency), "--drain-timeout", "1",
                  "--log-format", "json"),
        )

        def connected() -> bool:
            if not process.alive():
                raise AssertionError(f"worker exited:\n{self.logs()}")
            now = self.cluster.get("/v1/workers")["data"]
            return any(w["session_id"] not in before for w in now)

        self.wait(connected, what=f"{name} to connect")
        return process

    def logs(self, tail: int = 6000) -> str:
        """Every process log of this cluster (the end of each), for failure messages."""
        parts = []
        for path in sorted(self.cluster.workdir.glob("*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name} ---\n{text[-tail:]}")
        return "\n".join(parts)

    def log_events(self, process: Process, event: str) -> list[dict[str, Any]]:
        """The JSON log records of ``process`` whose ``event`` is ``event``."""
        out = []
        for line in process.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                out.append(record)
        return out

    # --- waits -------------------------------------------------------------------------

    def wait(self, predicate: Callable[[], T], *, what: str, timeout: float = 15.0) -> T:
        """:func:`wait_until`, with every process's log in the failure message."""
        try:
            return wait_until(predicate, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def check(self, condition: object, message: str) -> None:
        """``assert condition``, with the logs attached."""
        if not condition:
            raise AssertionError(f"{message}\n{self.logs()}")

    # --- the API -----------------------------------------------------------------------

    def send(self, name: str, data: dict[str, Any] | None = None) -> str:
        (event_id,) = self.cluster.send({"name": name, "data": data or {}})
        return event_id

    def run(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.cluster.get(f"/v1/runs/{run_id}")
        return run

    def runs_of(self, event_id: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.cluster.get(f"/v1/events/{event_id}/runs")["data"]
        return runs

    def run_of(self, event_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """The single run ``event_id`` started, once it exists."""
        runs = self.wait(lambda: self.runs_of(event_id), what=f"a run for event {event_id}",
                         timeout=timeout)
        self.check(len(runs) == 1, f"event {event_id} started {len(runs)} runs: {runs}")
        return runs[0]

    def runs_of_function(self, function_id: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.cluster.get(
            f"/v1/runs?function_id={function_id}&limit=100")["data"]
        return runs

    def wait_status(self, run_id: str, *statuses: str, timeout: float = 15.0
                    ) -> dict[str, Any]:
        """The run once its status is one of ``statuses``."""
        last: dict[str, Any] = {}

        def reached() -> dict[str, Any]:
            last.update(self.run(run_id))
            return dict(last) if last["status"] in statuses else {}

        try:
            return wait_until(reached, timeout=timeout,
                              what=f"run {run_id} to be {'/'.join(statuses)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the run is {last}\n{self.logs()}") from None

    def held_runs(self) -> int:
        """Runs leased to connected workers, as the gateway counts them."""
        return sum(w["in_flight"] for w in self.cluster.get("/v1/workers")["data"])


def steps_fixture(cluster: Cluster, *, start: bool = True) -> Iterator[Steps]:
    """A started gateway (unless ``start`` is false: the test starts it with its own
    options); on the way out, every blocked step is released so workers stop fast."""
    steps = Steps(cluster)
    if start:
        steps.start_gateway()
    try:
        yield steps
    finally:
        steps.release_all()
