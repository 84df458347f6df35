"""``python -m bench engineload``: the gateway's CPU per run under load, engine in-process.

One engine over a SQLite store in this process, one in-memory worker session with
``--capacity`` slots (no HTTP, no WebSocket, no worker process), events ingested ``--batch``
at a time while ``--inflight`` runs at most are unfinished. Each lease is answered as the
worker's frames would: its three ``StepCompleted`` and its ``RunCompleted`` (the gateway's
msgspec spellings) handed to the engine together, after a round of the loop. What the engine
sends is packed into frames (``protocol.codec.frames``), as the socket's outbox does.

Prints the CPU per run of the loop thread (the engine, and this driver's own small part: the
same in every version), of the SQLite writer thread, and of the whole process, per round
and as the median. Without sockets and a second process these figures swing far less than
``bench cpu``'s: compare versions of the engine, the transaction and the SQLite store by
alternating runs of this.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import orjson

from bench.commits import engine_over_sqlite, writer_clock
from cmdline.logs import configure
from cmdline.options import run_loop
from gateway.clock import SystemClock
from gateway.engine import Engine
from gateway.registry import WorkerEntry
from gateway.store.base import NewEvent
from protocol import hot
from protocol import messages as m
from protocol.codec import frames
from protocol.ids import new_id


class _Driver:
    """The worker's side, in-process: answers each lease with its run's four checkpoints."""

    def __init__(self, engine: Engine, clock: SystemClock, capacity: int) -> None:
        self.engine = engine
        self.clock = clock
        self.outbox: list[m.Message] = []
        self.flushing = False
        self.leases: list[m.LeaseGranted] = []
        self.seq = 0
        self.completed = 0
        self.acked_upto = 0
        self.done = asyncio.Event()
        self.target = 0
        self.entry = WorkerEntry(
            session_id="s1", instance_id="w1", capacity=capacity,
            functions=frozenset({"bench/three"}), apps={"bench": "1"},
            connected_at=clock.now(), send=self.send, close=lambda code, reason: None,
            last_seen=clock.monotonic())

    def send(self, message: m.Message) -> None:
        self.outbox.append(message)
        if not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """As the outbox's task: pack what a commit sent, then the worker answers."""
        self.flushing = False
        batch, self.outbox = self.outbox, []
        frames(batch, 16 * 2**20)
        for message in batch:
            if type(message) is m.LeaseGranted:
                self.leases.append(message)
            elif type(message) is m.CheckpointAck:
                self.acked_upto = message.upto
        if self.leases:
            asyncio.get_running_loop().call_soon(self.answer)
        if self.completed >= self.target and self.acked_upto >= self.seq:
            self.done.set()

    def answer(self) -> None:
        leases, self.leases = self.leases, []
        now = self.clock.now()
        checkpoint, entry = self.engine.checkpoint, self.entry
        for lease in leases:
            for step, value in (("one", b"1"), ("two", b"2"), ("three", b"3")):
                self.seq += 1
                checkpoint(entry, hot.StepCompleted(
                    seq=self.seq, run_id=lease.run_id, fence=lease.fence, step_id=step,
                    attempt=0, output=value, started_at=now, ended_at=now))
            self.seq += 1
            checkpoint(entry, hot.RunCompleted(seq=self.seq, run_id=lease.run_id,
                                               fence=lease.fence, output=b"6"))
            self.completed += 1


async def _round(engine: Engine, driver: _Driver, clock: SystemClock, runs: int, batch: int,
                 inflight: int) -> None:
    driver.target = driver.completed + runs
    driver.done.clear()
    sent = 0
    pending: set[asyncio.Task[Any]] = set()
    while sent < runs:
        while sent - (driver.completed - (driver.target - runs)) >= inflight:
            await asyncio.sleep(0.0005)
        events = []
        for _ in range(min(batch, runs - sent)):
            event_id = new_id(clock.now())
            body: dict[str, Any] = {"name": "bench/go", "data": {}, "id": event_id,
                                    "ts": 0, "user": None}
            events.append(NewEvent(event_id, "bench/go", orjson.dumps(body), body))
        sent += len(events)
        task = asyncio.ensure_future(engine.ingest(events))
        pending.add(task)
        task.add_done_callback(pending.discard)
        await asyncio.sleep(0)
    await driver.done.wait()
    if pending:
        await asyncio.gather(*pending)


async def measure(runs: int, rounds: int, batch: int, inflight: int, capacity: int,
                  warmup: int) -> list[tuple[float, ...]]:
    """(loop thread, writer thread, process) CPU µs per run and runs per commit, per
    round."""
    async with engine_over_sqlite() as (engine, clock):
        driver = _Driver(engine, clock, capacity)
        engine.registry.add(driver.entry)
        engine.worker_ready(driver.entry)
        commits = [0]
        store = engine.store
        write = store.write

        async def counted(batch: Any) -> Any:
            commits[0] += 1
            return await write(batch)

        store.write = counted  # type: ignore[method-assign]
        writer = writer_clock()
        figures = []
        if warmup:
            await _round(engine, driver, clock, warmup, batch, inflight)
        for _ in range(rounds):
            cpu0, wcpu0, pcpu0 = (time.thread_time(), time.clock_gettime(writer),
                                  time.process_time())
            commits[0] = 0
            await _round(engine, driver, clock, runs, batch, inflight)
            figures.append(((time.thread_time() - cpu0) / runs * 1e6,
                            (time.clock_gettime(writer) - wcpu0) / runs * 1e6,
                            (time.process_time() - pcpu0) / runs * 1e6,
                            runs / max(commits[0], 1)))
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench engineload", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10_000, help="runs per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=4000)
    p.add_argument("--batch", type=int, default=500, help="events per ingest (a POST)")
    p.add_argument("--inflight", type=int, default=2000, help="unfinished runs at most")
    p.add_argument("--capacity", type=int, default=1000, help="the worker's slots")
    args = p.parse_args(argv)
    configure("console", "warning")
    figures: list[tuple[float, ...]] = []

    async def run() -> None:  # as the gateway runs: uvloop, its garbage collector settings
        figures.extend(await measure(args.runs, args.rounds, args.batch, args.inflight,
                                     args.capacity, args.warmup))

    run_loop(run())
    print(f"engine in-process under load (SQLite, {args.runs} runs x {args.rounds}, "
          f"batches of {args.batch}), CPU µs per run:")
    for i, (loop, writer, process, per_commit) in enumerate(figures, 1):
        print(f"  round {i}: loop {loop:6.1f}  writer {writer:6.1f}  process {process:6.1f}"
              f"  ({per_commit:.0f} runs per commit)")
    loop, writer, process = (statistics.median(f[i] for f in figures) for i in range(3))
    print(f"median: loop {loop:.1f}  writer {writer:.1f}  process {process:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
