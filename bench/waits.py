"""``python -m bench waits``: what one incoming event costs when many runs wait for events.

Puts ``--waiting`` runs (default 10,000) in ``step.wait_for_event`` on a real SQLite store,
each waiting for its own ``reply`` event (``if_="async.data.id == event.data.id"``), then
sends ``--probes`` events one per batch and times the store's matching phase (finding the
candidate waits, evaluating their ``if_``, resuming the run), plus the whole batch commit.
Run with ``--unindexed`` to give every wait an ``if_`` the index cannot use, to see the scan
it saves.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.scheduler.triggers import TriggerIndex
from gateway.store import transaction
from gateway.store.base import CheckpointWrite, NewEvent, WorkerSlots, WriteBatch
from gateway.store.sqlite import SQLiteStore
from protocol import messages as m
from protocol.manifest import AppManifest, FunctionConfig, TriggerEvent

INDEXED = "async.data.id == event.data.id"
UNINDEXED = "async.data.id == event.data.id || false"


def _event(name: str, data: dict[str, Any], event_id: str) -> NewEvent:
    body = {"name": name, "data": data, "id": event_id, "ts": 0, "user": None}
    return NewEvent(event_id, name, orjson.dumps(body), body)


async def _bench(waiting: int, probes: int, expression: str, workdir: Path) -> None:
    store = SQLiteStore(workdir / "waits.db")
    await store.open()
    app = AppManifest(id="b", functions=[FunctionConfig(id="f", triggers=[TriggerEvent("go")])])
    await store.register_app(app, now=time.time())
    index = TriggerIndex()
    index.set_function("b/f", app.functions[0])

    def batch(**kw: Any) -> WriteBatch:
        return WriteBatch(now=time.time(), match=index.match, listens=index.listens, **kw)

    started = time.perf_counter()
    seq = 0
    for start in range(0, waiting, 1000):
        events = [_event("go", {"id": i}, f"go-{i}") for i in range(start, min(waiting,
                                                                               start + 1000))]
        slots = [WorkerSlots("s1", 1000, 0, frozenset({"b/f"}))]
        leased = await store.write(batch(events=events, claims=slots))
        checkpoints = []
        for lease in leased.leases:
            for kind, fields in ((m.WaitRequested, {"step_id": "reply", "event": "reply",
                                                    "timeout": 86400.0, "if_": expression}),
                                 (m.RunSuspended, {})):
                seq += 1
                checkpoints.append(CheckpointWrite(
                    "s1", kind(seq=seq, run_id=lease.run_id, fence=lease.fence, **fields),
                    since=time.time()))
        await store.write(batch(checkpoints=checkpoints))
    print(f"{waiting:,} runs waiting for 'reply' events (set up in "
          f"{time.perf_counter() - started:.1f} s)", flush=True)

    phase: list[float] = []
    original = transaction.Transaction._match_waits

    async def timed(self: transaction.Transaction) -> None:
        t0 = time.perf_counter()
        await original(self)
        phase.append(time.perf_counter() - t0)

    transaction.Transaction._match_waits = timed  # type: ignore[method-assign]
    try:
        totals, resumed = [], 0
        for i in range(probes):
            target = (i * 7919) % waiting
            t0 = time.perf_counter()
            result = await store.write(batch(events=[_event("reply", {"id": target},
                                                            f"reply-{i}")]))
            totals.append(time.perf_counter() - t0)
            resumed += "b/f" in result.touched_functions
    finally:
        transaction.Transaction._match_waits = original  # type: ignore[method-assign]
    await store.close()
    us = [p * 1e6 for p in phase]
    print(f"one matching event ({probes} probes, if_={expression!r}):")
    print(f"  matching phase          p50 {statistics.median(us):,.0f} us, "
          f"p99 {sorted(us)[int(0.99 * len(us))]:,.0f} us")
    print(f"  whole batch (commit)    p50 {statistics.median(totals) * 1e3:.2f} ms")
    print(f"  runs resumed            {resumed} of {probes}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench waits", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--waiting", type=int, default=10_000, help="runs waiting for events")
    p.add_argument("--probes", type=int, default=500, help="events sent, one per batch")
    p.add_argument("--unindexed", action="store_true",
                   help="give every wait an if_ the equality index cannot use")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        asyncio.run(_bench(args.waiting, args.probes,
                           UNINDEXED if args.unindexed else INDEXED, Path(tmp)))
    return 0
