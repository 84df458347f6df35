"""Support for the several-gateways end-to-end tests: one PostgreSQL database, many processes.

A :class:`Fleet` is several real ``python -m gateway`` processes (one :class:`Cluster` each,
with its own ports and log folder) sharing one throwaway database, plus workers started
against any of them with the other gateways' URLs as fallbacks. The user app is written into
a folder on every process's PYTHONPATH. Its steps append one line per execution to a ledger
file per worker process (``ledgers/PID.txt``, so lines from processes never interleave) and
may block on a go-file, so a test counts side effects and pauses a step without guessing
timings. Every wait is a bounded poll; failures carry every process's log.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from bench.cluster import Cluster, Process, free_port
from tests.e2e.harness import log_events
from tests.helpers import postgres as pg
from tests.helpers.waiting import bound, wait_until

T = TypeVar("T")

#: Imported by the test apps: ledger lines and go-files, in the app folder.
LEDGER_MODULE = '''
"""One ledger line per step execution, in a file per process; go-files to pause a step."""
import os
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEDGERS = HERE / "ledgers"
GATES = HERE / "gates"
_fd = None


def note(run_id, step_id):
    """Record that ``step_id`` of ``run_id`` runs here, now; return a nonce naming it."""
    global _fd
    if _fd is None:
        LEDGERS.mkdir(exist_ok=True)
        _fd = os.open(LEDGERS / f"{os.getpid()}.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    nonce = uuid.uuid4().hex[:12]
    os.write(_fd, f"{run_id} {step_id} {os.getpid()} {nonce} {time.time():.6f}\\n".encode())
    return f"{os.getpid()}:{nonce}"


async def gated(run_id, step_id, gate, limit=60.0):
    """Note the step, then wait for gates/GATE (or gates/ALL) to exist."""
    import asyncio

    nonce = note(run_id, step_id)
    deadline = time.monotonic() + limit
    while not (GATES / gate).exists() and not (GATES / "ALL").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        await asyncio.sleep(0.02)
    return nonce
'''


#: The load app: ``three`` runs steps a, b, c (sleeping ``data.nap`` seconds before c, when
#: given); ``hold`` runs the same steps with b waiting for the gate ``hold``. Each returns
#: its steps' results, so a run's output names the executions that were acknowledged.
LOAD_APP = '''
from gwledger import gated, note
from worker import App, TriggerEvent

app = App("load")


async def step(run_id, step_id):
    return note(run_id, step_id)


@app.function(id="three", trigger=TriggerEvent("load.run"), retries=2)
async def three(ctx):
    done = [await ctx.step.run("a", step, ctx.run_id, "a"),
            await ctx.step.run("b", step, ctx.run_id, "b")]
    if ctx.event.data.get("nap"):
        await ctx.step.sleep("nap", ctx.event.data["nap"])
    done.append(await ctx.step.run("c", step, ctx.run_id, "c"))
    return done


@app.function(id="hold", trigger=TriggerEvent("load.hold"), retries=2)
async def hold(ctx):
    return [await ctx.step.run("a", step, ctx.run_id, "a"),
            await ctx.step.run("b", gated, ctx.run_id, "b", "hold"),
            await ctx.step.run("c", step, ctx.run_id, "c")]
'''
LOAD_STEPS = ("a", "b", "c")


@dataclass(frozen=True)
class Execution:
    """One ledger line: step ``step`` of run ``run_id`` started in process ``pid``."""

    run_id: str
    step: str
    pid: int
    nonce: str
    at: float

    @property
    def result(self) -> str:
        """What the step returned (and what the run's memo holds if it was acknowledged)."""
        return f"{self.pid}:{self.nonce}"


@dataclass
class Reruns:
    """Steps of completed runs executed more than once, judged by what was acknowledged."""

    missing: list[tuple[str, str]] = field(default_factory=list)
    #: Ran again after an acknowledged execution: a broken guarantee.
    acknowledged: list[tuple[str, str, list[Execution], str]] = field(default_factory=list)
    #: Ran again after executions that were never acknowledged: allowed by the contract.
    unacknowledged: list[tuple[str, str, list[Execution], str]] = field(default_factory=list)


def run_sync(coro: Any) -> Any:
    """Run ``coro`` to completion on a loop of its own (pytest may have one running)."""
    return pg._run(coro)


async def _fetch(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return [tuple(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


class Fleet:
    """Gateways sharing the database ``db``, their workers, the app folder and its ledgers."""

    def __init__(self, root: Path, db: str, gateways: int) -> None:
        self.root = root
        self.db = db
        self.app_dir = root / "app"
        self.app_dir.mkdir(parents=True)
        (self.app_dir / "gwledger.py").write_text(LEDGER_MODULE)
        (self.app_dir / "gates").mkdir()
        self.clusters = [
            Cluster(root / f"gw{i}", db=db,
                    gateway_args=["--retry-base", "0.05", "--log-format", "json"],
                    env={"PYTHONPATH": str(self.app_dir)})
            for i in range(gateways)
        ]

    # --- processes -----------------------------------------------------------------------

    def start_gateways(self) -> None:
        """Start every gateway at once (they migrate the empty database concurrently)."""
        for cluster in self.clusters:
            cluster.start_gateway(wait=False)
        for cluster in self.clusters:
            try:
                try:
                    cluster.wait_healthy(timeout=bound(30))
                except RuntimeError as exc:
                    # Its ports were free when picked, and taken since by another test's
                    # process: nobody knows them yet, so it starts again on others.
                    if "address already in use" not in str(exc).lower():
                        raise
                    cluster.gateway = None
                    cluster.http_port, cluster.connect_port = free_port(), free_port()
                    cluster.start_gateway()
            except (RuntimeError, TimeoutError) as exc:
                raise AssertionError(f"{exc}\n{self.logs()}") from None

    def gateway(self, index: int) -> Process:
        process = self.clusters[index].gateway
        assert process is not None, f"gateway {index} was never started"
        return process

    def write_app(self, module: str, source: str) -> str:
        """Write ``module.py`` into the app folder; returns ``"module:app"``."""
        (self.app_dir / f"{module}.py").write_text(textwrap.dedent(source))
        return f"{module}:app"

    def start_worker(self, spec: str, order: list[int], *args: str, name: str = "worker"
                     ) -> Process:
        """A worker given the gateways' URLs in ``order`` (it connects to the first)."""
        first, *rest = order
        more: list[str] = []
        for index in rest:
            more += ["--gateway", self.clusters[index].connect_url]
        return self.clusters[first].start_worker(
            spec, name=name,
            args=(*more, "--log-format", "json", "--drain-timeout", "1", *args),
        )

    def workers_of(self, index: int, *, everywhere: bool = False) -> list[dict[str, Any]]:
        """``GET /v1/workers`` of gateway ``index``: those connected to it, or (``everywhere``)
        every gateway's, as it lists them."""
        cluster = self.clusters[index]
        data: list[dict[str, Any]] = cluster.get("/v1/workers")["data"]
        if everywhere:
            return data
        mine = cluster.get("/health")["gateway_id"]
        return [w for w in data if w["gateway_id"] == mine]

    def wait_connected(self, index: int, *workers: Process, timeout: float = 20.0
                       ) -> list[dict[str, Any]]:
        """Until gateway ``index`` lists each of ``workers`` (by the pid in its instance id)."""
        suffixes = {f"-{w.pid}" for w in workers}

        def listed() -> list[dict[str, Any]]:
            found = [w for w in self.workers_of(index)
                     if any(w["instance_id"].endswith(s) for s in suffixes)]
            return found if len(found) == len(suffixes) else []

        return self.wait(listed, f"gateway {index} to list workers {sorted(suffixes)}", timeout)

    def processes(self) -> list[Process]:
        out: list[Process] = []
        for cluster in self.clusters:
            out += cluster.workers
        return out + [c.gateway for c in self.clusters if c.gateway is not None]

    def stop(self) -> None:
        """SIGTERM everything at once (workers first), then wait; SIGKILL the stragglers."""
        for group in ([w for c in self.clusters for w in c.workers],
                      [c.gateway for c in self.clusters if c.gateway is not None]):
            for process in group:
                process.signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for process in group:
                try:
                    process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()

    # --- observations --------------------------------------------------------------------

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of ``query`` on the shared database (read straight from PostgreSQL)."""
        rows: list[tuple[Any, ...]] = run_sync(_fetch(self.db, query, *args))
        return rows

    def ledger(self) -> list[Execution]:
        """Every step execution recorded by every worker, oldest first."""
        out: list[Execution] = []
        for path in sorted((self.app_dir / "ledgers").glob("*.txt")):
            for line in path.read_text().splitlines():
                run_id, step, pid, nonce, at = line.split()
                out.append(Execution(run_id, step, int(pid), nonce, float(at)))
        return sorted(out, key=lambda e: e.at)

    def executions(self) -> dict[tuple[str, str], list[Execution]]:
        """Ledger lines grouped by (run id, step id)."""
        grouped: dict[tuple[str, str], list[Execution]] = defaultdict(list)
        for e in self.ledger():
            grouped[(e.run_id, e.step)].append(e)
        return grouped

    def reruns(self, runs: Sequence[tuple[str, bytes]], steps: Sequence[str] = LOAD_STEPS
               ) -> Reruns:
        """Compare the ledger with ``(run id, output)`` of completed runs of the load app.

        A run's output holds, per step, the result of the first execution whose checkpoint
        was committed (acknowledged): an execution after it re-ran an acknowledged step;
        executions before it were never acknowledged (refused, or lost with a gateway).
        """
        executions = self.executions()
        out = Reruns()
        for run_id, output in runs:
            for step_id, result in zip(steps, json.loads(output), strict=True):
                ran = executions.get((run_id, step_id), [])
                if not ran:
                    out.missing.append((run_id, step_id))
                elif ran[-1].result != result:
                    out.acknowledged.append((run_id, step_id, ran, result))
                elif len(ran) > 1:
                    out.unacknowledged.append((run_id, step_id, ran, result))
        return out

    def check_no_acknowledged_rerun(self, runs: Sequence[tuple[str, bytes]]) -> Reruns:
        """Fail, with the evidence, if a step never ran or ran again after its ack."""
        reruns = self.reruns(runs)
        self.check(not reruns.missing, f"steps never executed: {reruns.missing[:20]}")
        self.check(not reruns.acknowledged, "acknowledged steps ran again:\n" + "\n".join(
            f"{run_id} {step_id}: executions {ran}, acknowledged {result}, refusals "
            f"{self.refusals(run_id)}" for run_id, step_id, ran, result in reruns.acknowledged))
        return reruns

    def open_gate(self, gate: str) -> None:
        (self.app_dir / "gates" / gate).touch()

    def refusals(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """``checkpoint_refused`` log lines of every gateway (for ``run_id``, when given)."""
        return [r for c in self.clusters if c.gateway is not None
                for r in log_events(c.gateway, "checkpoint_refused")
                if run_id is None or r.get("run_id") == run_id]

    def logs(self, tail: int = 8000) -> str:
        """Every process log (the end of each), for failure messages."""
        parts = []
        for path in sorted(self.root.glob("gw*/*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"----- {path.parent.name}/{path.name} -----\n{text[-tail:]}")
        return "\n".join(parts)

    def wait(self, predicate: Callable[[], T], what: str, timeout: float = 20.0,
             interval: float = 0.05) -> T:
        """:func:`wait_until`, failing with every log attached."""
        try:
            return wait_until(predicate, timeout=timeout, interval=interval, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def check(self, condition: object, message: str) -> None:
        """``assert condition``, with every log attached to the failure."""
        if not condition:
            raise AssertionError(f"{message}\n{self.logs()}")


class Sender(threading.Thread):
    """Sends events in batches, round-robin over the fleet's gateways, paced.

    A batch that a gateway does not answer (it was killed or stopped) goes to the next
    gateway with the same event ids: if the first had committed it, the ids are deduplicated.
    """

    def __init__(self, fleet: Fleet, events: list[dict[str, Any]], *, batch: int,
                 pace: float) -> None:
        super().__init__(daemon=True)
        self.fleet = fleet
        self.events = events
        self.batch = batch
        self.pace = pace
        self.sent = 0
        self.failures: list[str] = []
        self.error: str | None = None

    def run(self) -> None:
        clusters = self.fleet.clusters
        for k, start in enumerate(range(0, len(self.events), self.batch)):
            batch = self.events[start:start + self.batch]
            for attempt in range(len(clusters)):
                cluster = clusters[(k + attempt) % len(clusters)]
                try:
                    cluster.send(batch)
                    break
                except (OSError, RuntimeError) as exc:
                    self.failures.append(f"batch {k} to {cluster.api}: {exc!r}")
            else:
                self.error = f"no gateway took batch {k}: {self.failures[-3:]}"
                return
            self.sent += len(batch)
            time.sleep(self.pace)  # pacing the load, not waiting for an outcome

    def finish(self, timeout: float = 30.0) -> None:
        """Wait for the last batch; fail if one could not be sent at all."""
        self.join(timeout=bound(timeout))
        self.fleet.check(not self.is_alive() and self.error is None,
                         f"sending failed: {self.error}; {self.failures}")


def fleet_fixture(root: Path, gateways: int) -> Iterator[Fleet]:
    """A fleet on a database of its own (dropped at the end); no process started yet."""
    db = pg.create_database_sync("tether_gateways")
    fleet = Fleet(root, db, gateways)
    try:
        yield fleet
    finally:
        try:
            fleet.open_gate("ALL")
            fleet.stop()
        finally:
            pg.drop_database_sync(db)
