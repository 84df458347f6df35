"""The reference pipeline: the least a durable 3-step run can cost on this machine.

Issue 12 measured "a bare websockets + msgpack + uvloop + SQLite (WAL, synchronous=FULL,
group commit) pipeline" against Tether. This is that pipeline, kept in the repo so the ratio
can be measured on whatever machine runs the bench (the machines here differ by 3x from one
day to the next; a ratio of two figures measured minutes apart does not).

It does the durable work Tether does for the bench's 3-step function and nothing else: a
sender posts events in batches of 500 over a WebSocket; the gateway process writes each
event and its run, acknowledges the batch after the commit, leases ready runs to the worker
(the lease written too), and writes each step's checkpoint and each run's end as the worker
streams them, acknowledging after the commit. One writer thread commits whatever is pending
(group commit), fsync before every acknowledgement. No validation, no flow control, no
retries, no HTTP, no expressions, no logging: a floor, not a design.

    python -m bench bare                 # steps/s of the reference pipeline
    python -m bench throughput           # prints Tether's figure and the ratio to this one
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import uvloop
import websockets

STEPS_PER_RUN = 3
SCHEMA = """
CREATE TABLE events (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL, status INTEGER NOT NULL,
                   output BLOB);
CREATE TABLE steps (run_id INTEGER NOT NULL, step_id TEXT NOT NULL, output BLOB,
                    PRIMARY KEY (run_id, step_id)) WITHOUT ROWID;
"""


class Gateway:
    """Stores events, runs and steps with one group-committing writer thread."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.next_id = 0
        self.events: list[tuple[int, bytes]] = []     # pending writes of the next commit
        self.leases: list[tuple[int, bytes]] = []
        self.steps: list[tuple[int, str, bytes]] = []
        self.ends: list[tuple[bytes, int]] = []
        self.after_commit: list[tuple[Any, bytes]] = []  # (socket, frame) sent once durable
        self.ready: list[tuple[int, bytes]] = []
        self.worker: Any = None
        self.free = 0
        self.completed = 0
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.wake = asyncio.Event()
        self.worker_came = asyncio.Event()

    def write(self, events: list[tuple[int, bytes]], leases: list[tuple[int, bytes]],
              steps: list[tuple[int, str, bytes]], ends: list[tuple[bytes, int]]) -> None:
        db = self.db
        db.execute("BEGIN")
        if events:
            db.executemany("INSERT INTO events (id, data) VALUES (?, ?)", events)
            db.executemany("INSERT INTO runs (id, event_id, status) VALUES (?, ?, 0)",
                           [(i, i) for i, _ in events])
        if leases:
            db.executemany("UPDATE runs SET status = 1 WHERE id = ?", [(i,) for i, _ in leases])
        if steps:
            db.executemany("INSERT INTO steps (run_id, step_id, output) VALUES (?, ?, ?)", steps)
        if ends:
            db.executemany("UPDATE runs SET status = 2, output = ? WHERE id = ?", ends)
        db.execute("COMMIT")

    async def commit_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            take = min(self.free, len(self.ready))
            leases, self.ready = self.ready[:take], self.ready[take:]
            self.free -= take
            events, steps, ends = self.events, self.steps, self.ends
            sends = self.after_commit
            self.events, self.steps, self.ends, self.after_commit = [], [], [], []
            if not (events or leases or steps or ends):
                continue
            await loop.run_in_executor(None, self.write, events, leases, steps, ends)
            self.ready.extend(events)
            self.completed += len(ends)
            self.free += len(ends)
            if leases and self.worker is not None:
                sends.append((self.worker, msgpack.packb(["lease", leases])))
            for ws, frame in sends:
                await ws.send(frame)
            self.waiters = [(n, f) for n, f in self.waiters if not self._settle(n, f)]
            if self.ready and self.free:
                self.wake.set()

    def _settle(self, target: int, future: asyncio.Future[None]) -> bool:
        if self.completed >= target and not future.done():
            future.set_result(None)
        return future.done()

    async def serve(self, ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):   # a sender done, or the end
            await self._serve(ws)

    async def _serve(self, ws: Any) -> None:
        async for raw in ws:
            message = msgpack.unpackb(raw)
            kind = message[0]
            if kind == "events":
                first = self.next_id + 1
                self.next_id += len(message[1])
                self.events.extend(zip(range(first, self.next_id + 1), message[1], strict=True))
                self.after_commit.append((ws, msgpack.packb(["ok", len(message[1])])))
            elif kind == "frame":       # the worker's checkpoints: [seq, run, step | None, out]
                upto = 0
                for seq, run_id, step_id, output in message[1]:
                    if step_id is None:
                        self.ends.append((output, run_id))
                    else:
                        self.steps.append((run_id, step_id, output))
                    upto = seq
                self.after_commit.append((ws, msgpack.packb(["ack", upto])))
            elif kind == "hello":
                self.worker, self.free = ws, message[1]
                self.worker_came.set()
            elif kind == "worker?":
                await self.worker_came.wait()
                await ws.send(msgpack.packb(["worker", True]))
            elif kind == "wait":
                future = asyncio.get_running_loop().create_future()
                self.waiters.append((message[1], future))
                self.waiters = [(n, f) for n, f in self.waiters if not self._settle(n, f)]
                await future
                await ws.send(msgpack.packb(["done", self.completed]))
            self.wake.set()


async def gateway_main(path: Path, port_file: Path) -> None:
    gateway = Gateway(path)
    committer = asyncio.create_task(gateway.commit_forever())
    async with websockets.serve(gateway.serve, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        port_file.write_text(str(port))
        await asyncio.Future()
    committer.cancel()


async def step(value: int) -> int:
    return value


async def worker_main(url: str, concurrency: int) -> None:
    """Runs each leased run's three steps, streaming one checkpoint per step."""
    async with websockets.connect(url, max_size=None) as ws:
        outbox: list[list[Any]] = []
        seq = 0
        flushing = False

        async def flush() -> None:
            nonlocal flushing, outbox
            frame, outbox, flushing = outbox, [], False
            await ws.send(msgpack.packb(["frame", frame]))

        def checkpoint(run_id: int, step_id: str | None, output: int) -> None:
            nonlocal seq, flushing
            seq += 1
            outbox.append([seq, run_id, step_id, msgpack.packb(output)])
            if not flushing:
                flushing = True
                asyncio.get_running_loop().create_task(flush())

        async def run(run_id: int, event: bytes) -> None:
            total = 0
            for step_id, value in (("one", 1), ("two", 2), ("three", 3)):
                total += await step(value)
                checkpoint(run_id, step_id, value)
            checkpoint(run_id, None, total)

        await ws.send(msgpack.packb(["hello", concurrency]))
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for raw in ws:
                message = msgpack.unpackb(raw)
                if message[0] == "lease":
                    for run_id, event in message[1]:
                        task = asyncio.get_running_loop().create_task(run(run_id, event))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
        except websockets.ConnectionClosed:
            pass                        # the gateway stopped at the end of the measurement


async def send_all(url: str, events: int, batch: int, senders: int) -> float:
    """Posts the events from ``senders`` connections, waits for every run; returns seconds."""
    payloads = [[json.dumps({"name": "bench/go", "data": {"i": i}}).encode()
                 for i in range(start, min(start + batch, events))]
                for start in range(0, events, batch)]

    async def sender(mine: list[list[bytes]]) -> None:
        async with websockets.connect(url, max_size=None) as ws:
            for chunk in mine:
                await ws.send(msgpack.packb(["events", chunk]))
                await ws.recv()

    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(msgpack.packb(["worker?"]))
        await ws.recv()
    began = time.perf_counter()
    await asyncio.gather(*(sender(payloads[i::senders]) for i in range(senders)))
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(msgpack.packb(["wait", events]))
        await ws.recv()
    return time.perf_counter() - began


def measure(*, events: int = 20000, batch: int = 500, senders: int = 2,
            concurrency: int = 1000, keep: Path | None = None) -> float:
    """Durable steps/s of the reference pipeline (fresh processes and store each call).

    With ``keep``, the store is written there (``bare.db``) and left for the caller to read.
    """
    with tempfile.TemporaryDirectory(prefix="tether-bare-") as scratch:
        tmp = str(keep) if keep is not None else scratch
        port_file = Path(tmp) / "port"
        me = [sys.executable, "-m", "bench.bare"]
        gateway = subprocess.Popen([*me, "--role", "gateway", "--dir", tmp])
        worker = None
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline or gateway.poll() is not None:
                    raise RuntimeError("the reference gateway did not start")
                time.sleep(0.02)
            url = f"ws://127.0.0.1:{port_file.read_text()}"
            worker = subprocess.Popen([*me, "--role", "worker", "--url", url,
                                       "--concurrency", str(concurrency)])
            seconds = uvloop.run(send_all(url, events, batch, senders))
            return events * STEPS_PER_RUN / seconds
        finally:
            for process in (worker, gateway):
                if process is not None:
                    process.terminate()
                    process.wait(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench bare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20000, help="events (one 3-step run each)")
    p.add_argument("--batch", type=int, default=500, help="events per message")
    p.add_argument("--senders", type=int, default=2, help="sending connections")
    p.add_argument("--concurrency", type=int, default=1000, help="runs leased at once")
    p.add_argument("--repeats", type=int, default=3, help="runs; the median is the figure")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the figures here")
    p.add_argument("--role", choices=["gateway", "worker"], help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "gateway":
        uvloop.run(gateway_main(args.dir / "bare.db", args.dir / "port"))
        return 0
    if args.role == "worker":
        uvloop.run(worker_main(args.url, args.concurrency))
        return 0
    figures = []
    for i in range(args.repeats):
        figures.append(measure(events=args.events, batch=args.batch, senders=args.senders,
                               concurrency=args.concurrency))
        print(f"  run {i + 1}: {figures[-1]:,.0f} durable steps/s", flush=True)
    median = sorted(figures)[len(figures) // 2]
    print(f"reference pipeline (websockets + msgpack + uvloop + SQLite WAL, synchronous=FULL, "
          f"group commit; {args.events} events in batches of {args.batch}):")
    print(f"  durable steps/s         {median:,.0f} (median of {args.repeats})")
    if args.json is not None:
        args.json.write_text(json.dumps({"steps_per_s": median, "runs": figures,
                                         "options": {"events": args.events}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
