"""``python -m bench styles``: durable steps/s of the 3-step function written four ways.

The same three trivial steps as ``bench throughput``, written (see bench/app.py) with
``async def`` step callables (the reference), with plain ``def`` step callables, with
``lambda`` step callables, and as a ``def`` function (whose ``ctx.step.run`` blocks). One
gateway (SQLite) and one worker serve all four; each round posts ``--runs`` events of every
style in turn (the order rotates from round to round, so that no style always runs first),
waits until that style's runs completed and reads the wall time and the worker's CPU time.

Prints, per style, the median steps/s over the rounds and its ratio to the async style in the
same run, and the CPU ms the gateway and the worker spent per 1,000 runs, with the ratio of
async's total CPU to the style's: what the steps/s ratio is on a machine where both processes
have the cores to themselves (on a shared, busy machine wall time swings far more than CPU
time). Issue 12's bar: plain callables within 20% of async ones (ratio >= 0.80), ``def``
functions within 30% (ratio >= 0.70).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.cluster import Cluster
from bench.cpu import _wait_workers, cpu_seconds

STEPS_PER_RUN = 3

#: style -> (event name, function id), as in bench/app.py.
STYLES = {
    "async": ("bench/go", "bench/three-steps"),
    "def steps": ("bench/def-steps", "bench/three-def-steps"),
    "lambdas": ("bench/lambdas", "bench/three-lambdas"),
    "def function": ("bench/def-function", "bench/three-steps-def"),
}


@dataclass
class Style:
    steps_per_s: list[float]
    worker_ms: list[float]  # worker CPU ms per 1,000 runs
    gateway_ms: list[float]

    @property
    def cpu_ms(self) -> float:
        """Median gateway + worker CPU ms per 1,000 runs."""
        return statistics.median(g + w for g, w in zip(self.gateway_ms, self.worker_ms,
                                                       strict=True))

    @property
    def median(self) -> float:
        return statistics.median(self.steps_per_s)


def _completed(db: Path, function_id: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute(
            "SELECT COUNT(*) FROM runs WHERE status = 'Completed' AND function_id = ?",
            (function_id,)).fetchone()[0])
    finally:
        conn.close()


def _wait_completed(db: Path, function_id: str, target: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            done = _completed(db, function_id)
        except sqlite3.OperationalError:  # busy: ask again
            done = -1
        if done >= target:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {target} runs of {function_id} completed")
        time.sleep(0.02)


def _send(cluster: Cluster, event: str, count: int, batch: int) -> None:
    for start in range(0, count, batch):
        cluster.send([{"name": event, "data": {"i": i}}
                      for i in range(start, min(start + batch, count))])


def measure(*, runs: int, rounds: int, warmup: int, batch: int, concurrency: int,
            styles: list[str], progress: bool = True) -> dict[str, Style]:
    results = {name: Style([], [], []) for name in styles}
    with tempfile.TemporaryDirectory(prefix="tether-bench-styles-") as tmp:
        workdir = Path(tmp)
        cluster = Cluster(workdir, gateway_args=["--log-level", "warning"])
        db = workdir / "tether.db"
        done = dict.fromkeys(styles, 0)
        try:
            cluster.start_gateway()
            worker = cluster.start_worker("bench.app:app", args=(
                "--concurrency", str(concurrency), "--log-level", "warning"))
            _wait_workers(cluster)
            assert cluster.gateway is not None
            gateway = cluster.gateway
            for name in styles:
                event, function_id = STYLES[name]
                if warmup:
                    _send(cluster, event, warmup, batch)
                    done[name] += warmup
                    _wait_completed(db, function_id, done[name], timeout=300)
            for r in range(rounds):
                order = styles[r % len(styles):] + styles[:r % len(styles)]
                for name in order:
                    event, function_id = STYLES[name]
                    g0, w0 = cpu_seconds(gateway.pid), cpu_seconds(worker.pid)
                    t0 = time.monotonic()
                    _send(cluster, event, runs, batch)
                    done[name] += runs
                    _wait_completed(db, function_id, done[name], timeout=600)
                    t1 = time.monotonic()
                    g1, w1 = cpu_seconds(gateway.pid), cpu_seconds(worker.pid)
                    steps_s = runs * STEPS_PER_RUN / (t1 - t0)
                    results[name].steps_per_s.append(steps_s)
                    results[name].worker_ms.append((w1 - w0) * 1e6 / runs)
                    results[name].gateway_ms.append((g1 - g0) * 1e6 / runs)
                    if progress:
                        print(f"  round {r + 1} {name:<13} {steps_s:8,.0f} steps/s  CPU ms per "
                              f"1,000 runs: gateway {(g1 - g0) * 1e6 / runs:6.1f}, worker "
                              f"{(w1 - w0) * 1e6 / runs:6.1f}", flush=True)
            return results
        finally:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench styles", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1500, help="events (runs) per style and round")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds")
    p.add_argument("--warmup", type=int, default=300, help="runs of each style first")
    p.add_argument("--batch", type=int, default=500, help="events per POST")
    p.add_argument("--concurrency", type=int, default=500, help="the worker's --concurrency")
    p.add_argument("--style", action="append", choices=list(STYLES), default=None,
                   help="measure only these styles (repeatable; async is always measured)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    styles = list(STYLES) if not args.style else ["async"] + [
        s for s in STYLES if s in args.style and s != "async"]
    print(f"durable steps/s of the 3-step function by style ({args.runs} runs x "
          f"{args.rounds} rounds per style, worker --concurrency {args.concurrency}):",
          flush=True)
    results = measure(runs=args.runs, rounds=args.rounds, warmup=args.warmup,
                      batch=args.batch, concurrency=args.concurrency, styles=styles)
    base, base_cpu = results["async"].median, results["async"].cpu_ms
    print("median over the rounds (CPU: ms per 1,000 runs; CPU ratio: async's gateway + "
          "worker CPU over the style's):")
    for name, style in results.items():
        print(f"  {name:<13} {style.median:8,.0f} steps/s  x{style.median / base:.2f} of async  "
              f"CPU gateway {statistics.median(style.gateway_ms):6.1f} worker "
              f"{statistics.median(style.worker_ms):6.1f}  "
              f"CPU ratio x{base_cpu / style.cpu_ms:.2f}")
    if args.json:
        args.json.write_text(json.dumps(
            {name: {**asdict(style), "median_steps_per_s": style.median,
                    "ratio_to_async": style.median / base,
                    "cpu_ratio_to_async": base_cpu / style.cpu_ms}
             for name, style in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
