"""What the end-to-end tests share: the app in the workdir, runs over the API, ledger and logs.

Everything here observes real processes: the HTTP API, the JSON log lines of the gateway and
workers, and the ledger the app's steps write. Waits are bounded polls (``wait_until``);
a timeout fails with every process's log attached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench.cluster import ROOT, Cluster, Process
from tests.helpers.waiting import bound, wait_until

T = TypeVar("T")

APP_SOURCE = Path(__file__).with_name("e2eapp.py")
APP = "e2eapp:app"
FINAL = frozenset({"Completed", "Failed", "Cancelled", "Skipped"})
LEDGER_NAME = "ledger.txt"
LOGS_MARK = f"----- {LEDGER_NAME} -----"  # ends every dump of the logs


@dataclass(frozen=True)
class Entry:
    """One ledger line: a step of run ``key`` started in process ``pid``."""

    key: str
    step: str
    pid: int
    extra: tuple[str, ...]


def cluster_with_app(tmp_path: Path, module: str, source: str) -> Iterator[Cluster]:
    """A cluster (JSON logs) whose processes can import ``module`` (``source``); stopped after."""
    cluster = Cluster(tmp_path / "cluster", gateway_args=["--log-format", "json"])
    (cluster.workdir / f"{module}.py").write_text(source)
    try:
        yield cluster
    finally:
        cluster.stop()


def log_events(proc: Process, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines of ``proc`` (those named ``event``, when given)."""
    out = []
    for line in proc.log().splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if event is None or record.get("event") == event:
            out.append(record)
    return out


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any ``TETHER_*`` setting, plus ``extra``, for CLI runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "200"  # --help lines unwrapped, so option and variable stay together
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, timeout: float = 30.0, **env: str
            ) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` as a user would type it, to completion."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=clean_env(**env), capture_output=True,
        text=True, timeout=bound(timeout),
    )


class E2E:
    """A cluster serving the e2e app, with helpers to drive and observe it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.workdir = cluster.workdir
        self.ledger_path = self.workdir / LEDGER_NAME
        shutil.copy(APP_SOURCE, self.workdir / "e2eapp.py")
        self.headers: dict[str, str] = {}
        self.event_key = "dev"
        self._keys = 0

    # --- processes -----------------------------------------------------------------------

    def start_gateway(self, *args: str) -> Process:
        return self.cluster.start_gateway(*args)

    def start_worker(self, *args: str, name: str = "worker") -> Process:
        return self.cluster.start_worker(APP, args=("--log-format", "json", *args), name=name)

    def workers_connected(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.cluster.get("/v1/workers", headers=self.headers)["data"]
        return data

    def wait_workers(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Until ``count`` workers are connected (and serving the e2e app)."""
        (workers,) = self.wait(  # a 1-tuple, truthy even when no worker is the answer
            lambda: (lambda ws: (ws,) if len(ws) == count else None)(self.workers_connected()),
            f"{count} connected worker(s)", timeout,
        )
        return workers

    # --- failures carry the logs ---------------------------------------------------------

    def logs(self) -> str:
        """Every process log of this cluster and the ledger, for assertion messages."""
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            parts.append(f"----- {path.name} -----\n{path.read_text(errors='replace')[-12000:]}")
        parts.append(f"{LOGS_MARK}\n{self._ledger_text()}")
        return "\n".join(parts)

    def wait(self, predicate: Callable[[], T], what: str, timeout: float = 20.0) -> T:
        """:func:`wait_until`, failing with every log attached."""
        try:
            return wait_until(predicate, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def check(self, condition: object, message: str) -> None:
        """``assert condition``, with every log attached to the failure."""
        if not condition:
            raise AssertionError(f"{message}\n{self.logs()}")

    # --- runs ----------------------------------------------------------------------------

    def new_key(self) -> str:
        self._keys += 1
        return f"k{self._keys}"

    def send(self, name: str, **data: Any) -> str:
        (event_id,) = self.cluster.send({"name": name, "data": data}, key=self.event_key)
        return event_id

    def run_of(self, event_id: str) -> dict[str, Any]:
        """The one run the event started (created in the same commit as the event)."""
        runs = self.wait(
            lambda: self.cluster.get(f"/v1/events/{event_id}/runs", headers=self.headers)["data"],
            f"a run for event {event_id}",
        )
        self.check(len(runs) == 1, f"event {event_id} started {len(runs)} runs: {runs}")
        run: dict[str, Any] = runs[0]
        return run

    def get_run(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.cluster.get(f"/v1/runs/{run_id}", headers=self.headers)
        return run

    def wait_run(self, run_id: str, predicate: Callable[[dict[str, Any]], object], what: str,
                 timeout: float = 20.0) -> dict[str, Any]:
        return self.wait(lambda: (lambda r: r if predicate(r) else None)(self.get_run(run_id)),
                         f"run {run_id}: {what}", timeout)

    def wait_final(self, run_id: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait_run(run_id, lambda r: r["status"] in FINAL, "a final status", timeout)

    def wait_step_completed(self, run_id: str, step_id: str,
                            timeout: float = 20.0) -> dict[str, Any]:
        """Until the gateway has committed (and so acknowledged) ``step_id`` of the run."""
        return self.wait_run(
            run_id, lambda r: step(r, step_id) and step(r, step_id)["status"] == "Completed",
            f"step {step_id} completed", timeout,
        )

    # --- ledger and gates ----------------------------------------------------------------

    def _ledger_text(self) -> str:
        try:
            return self.ledger_path.read_text()
        except FileNotFoundError:
            return ""

    def ledger(self, key: str | None = None) -> list[Entry]:
        entries = []
        for line in self._ledger_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and (key is None or parts[0] == key):
                entries.append(Entry(parts[0], parts[1], int(parts[2]), tuple(parts[3:])))
        return entries

    def step_counts(self, key: str) -> Counter[str]:
        return Counter(e.step for e in self.ledger(key))

    def started(self, key: str, step_id: str, pids: Iterable[int] | None = None
                ) -> list[Entry]:
        wanted = None if pids is None else set(pids)
        return [e for e in self.ledger(key)
                if e.step == step_id and (wanted is None or e.pid in wanted)]

    def wait_started(self, key: str, step_id: str, pids: Iterable[int] | None = None,
                     count: int = 1, timeout: float = 20.0) -> list[Entry]:
        """Until ``step_id`` of ``key`` has started ``count`` times (on one of ``pids``)."""
        pid_list = None if pids is None else list(pids)
        return self.wait(
            lambda: (lambda es: es if len(es) >= count else None)(
                self.started(key, step_id, pid_list)),
            f"step {step_id} of {key} started {count}x on {pid_list or 'any worker'}", timeout,
        )

    def open_gate(self, key: str, pid: int | None = None) -> None:
        """Let the gated step of ``key`` finish (only in process ``pid``, when given)."""
        (self.workdir / (f"go-{key}" if pid is None else f"go-{key}-{pid}")).touch()


def step(run: dict[str, Any], step_id: str) -> dict[str, Any] | None:
    """The step ``step_id`` of a run as the API shows it, or None."""
    for s in run["steps"]:
        if s["id"] == step_id:
            found: dict[str, Any] = s
            return found
    return None
