"""``python -m bench commits``: what the engine's two commits of a light-load run cost.

One engine over a SQLite store in this process, one in-memory worker session (no HTTP, no
WebSocket, no second process), runs of one function one at a time, ``--gap`` seconds apart
(light load: each commit finds the caches as cold as a gateway at rest does). A run is its
event (commit 1: the event, the run, its lease) and its three steps and end, checkpointed
together as the worker's frame brings them (commit 2). Prints, per run: the loop thread's and
the SQLite writer thread's CPU (``pthread_getcpuclockid``), and the wall time from the event
handed to the engine to its lease, and from the checkpoints to their acknowledgement.

It measures what the gateway's CPU per run at light load is made of without the noise of the
processes and sockets around it; compare versions by alternating runs. The event loop is
the gateway's (uvloop, its garbage collector settings), logs at ``warning``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from cmdline.logs import configure
from cmdline.options import run_loop
from gateway.clock import SystemClock
from gateway.engine import Engine
from gateway.registry import Registry, WorkerEntry
from gateway.store.base import NewEvent
from gateway.store.sqlite import SQLiteStore
from protocol import messages as m
from protocol.ids import new_id
from protocol.manifest import AppManifest, FunctionConfig, TriggerEvent


@contextlib.asynccontextmanager
async def engine_over_sqlite() -> AsyncIterator[tuple[Engine, SystemClock]]:
    """A running engine over a fresh SQLite store, with the benchmark's function
    ``bench/three`` (triggered by ``bench/go``); stopped and closed on the way out."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        store = SQLiteStore(Path(tmp) / "tether.db")
        await store.open()
        clock = SystemClock()
        engine = Engine(store, Registry(), clock, retry_base=1.0)
        await engine.load()
        await engine.register_app(AppManifest(id="bench", version="1", functions=[
            FunctionConfig(id="three", triggers=[TriggerEvent("bench/go")], retries=0)]))
        task = asyncio.create_task(engine.run())
        try:
            yield engine, clock
        finally:
            await engine.close()
            await task
            await store.close()


def writer_clock() -> int:
    """The CPU clock of the store's writer thread."""
    for thread in threading.enumerate():
        if thread.name.startswith("tether-db-writer") and thread.ident is not None:
            return time.pthread_getcpuclockid(thread.ident)
    raise RuntimeError("no SQLite writer thread")


async def measure(runs: int, gap: float, warmup: int) -> dict[str, float]:
    """Median and mean figures per run (µs)."""
    async with engine_over_sqlite() as (engine, clock):
        inbox: asyncio.Queue[m.Message] = asyncio.Queue()
        entry = WorkerEntry(
            session_id="s1", instance_id="w1", capacity=1000,
            functions=frozenset({"bench/three"}), apps={"bench": "1"},
            connected_at=clock.now(), send=inbox.put_nowait, close=lambda code, reason: None,
            last_seen=clock.monotonic())
        engine.registry.add(entry)
        engine.worker_ready(entry)
        writer = writer_clock()
        seq = 0
        loop_cpu: list[float] = []
        writer_cpu: list[float] = []
        to_lease: list[float] = []
        to_ack: list[float] = []
        for index in range(warmup + runs):
            await asyncio.sleep(gap)
            cpu0, wcpu0 = time.thread_time(), time.clock_gettime(writer)
            started = time.perf_counter()
            event_id = new_id(clock.now())
            body: dict[str, Any] = {"name": "bench/go", "data": {}, "id": event_id,
                                    "ts": 0, "user": None}
            await engine.ingest([NewEvent(event_id, "bench/go", orjson.dumps(body), body)])
            lease = await _next(inbox, m.LeaseGranted)
            leased = time.perf_counter()
            now = clock.now()
            for step, value in (("one", b"1"), ("two", b"2"), ("three", b"3")):
                seq += 1
                engine.checkpoint(entry, m.StepCompleted(
                    seq=seq, run_id=lease.run_id, fence=lease.fence, step_id=step,
                    attempt=0, output=value, started_at=now, ended_at=now))
            seq += 1
            engine.checkpoint(entry, m.RunCompleted(seq=seq, run_id=lease.run_id,
                                                    fence=lease.fence, output=b"6"))
            while (await _next(inbox, m.CheckpointAck)).upto < seq:
                pass
            acked = time.perf_counter()
            if index >= warmup:
                loop_cpu.append(time.thread_time() - cpu0)
                writer_cpu.append(time.clock_gettime(writer) - wcpu0)
                to_lease.append(leased - started)
                to_ack.append(acked - leased)
    figures: dict[str, float] = {}
    for name, values in (("loop thread CPU", loop_cpu), ("writer thread CPU", writer_cpu),
                         ("event -> lease sent (wall)", to_lease),
                         ("checkpoints -> ack (wall)", to_ack)):
        figures[f"{name}, median"] = statistics.median(values) * 1e6
        figures[f"{name}, mean"] = statistics.fmean(values) * 1e6
        figures[f"{name}, p99"] = statistics.quantiles(values, n=100)[98] * 1e6
    return figures


async def _next(inbox: asyncio.Queue[m.Message], kind: type[Any]) -> Any:
    while True:
        message = await asyncio.wait_for(inbox.get(), 10)
        if isinstance(message, kind):
            return message


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench commits", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--gap", type=float, default=0.01, help="seconds between runs")
    p.add_argument("--warmup", type=int, default=100)
    args = p.parse_args(argv)
    configure("console", "warning")
    figures: dict[str, float] = {}

    async def run() -> None:  # as the gateway runs: uvloop, its garbage collector settings
        figures.update(await measure(args.runs, args.gap, args.warmup))

    run_loop(run())
    print(f"one light-load run through the engine in-process (SQLite, {args.runs} runs, "
          f"{args.gap * 1000:g} ms apart), µs per run:")
    for name, value in figures.items():
        print(f"  {name:<40} {value:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
