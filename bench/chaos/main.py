"""``python -m bench chaos [--long] [--only NAME] [--seed N]``: fault loops and their accounting.

Each loop puts load on real gateways and workers (runs of witnessed steps, some with a
send_event and an invoke), injects its faults on a schedule drawn from the seed, heals, and
counts: events answered ok but lost, runs started twice, runs not completed or stuck past the
heal window, steps run again after their result was committed, effects taken twice or never,
SQLite's integrity_check. The short form is what the CI suite runs; ``--long`` runs the counts
of issue 13. Prints one table; exits 1 when any promise was broken (the details follow it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench.chaos import faults
from bench.chaos.checker import Report
from bench.chaos.faults import Plan
from bench.chaos.pgserver import binaries


def plans(long: bool) -> dict[str, Plan]:
    """The loops, short (a few cycles each) or long (issue 13's counts)."""

    def n(short: int, full: int) -> int:
        return full if long else short

    return {
        "worker-kill": Plan("worker kill -9", faults.kill_worker, n(4, 150)),
        "worker-stop": Plan("worker SIGSTOP/CONT", faults.stop_worker, n(2, 50)),
        "gateway-kill": Plan("gateway kill -9, SQLite", faults.kill_gateway, n(3, 50)),
        "postgres": Plan("2 gateways, PostgreSQL", faults.postgres_mix, n(4, 50),
                         backend="postgres", gateways=2, workers=2),
        "disk-full": Plan("disk full, SQLite on tmpfs", faults.disk_full, n(2, 20),
                          disk_mb=n(24, 96), pad=n(20_000, 4_000)),
        "outside-lock": Plan("outside write lock, SQLite", faults.outside_lock, n(2, 20)),
        "clock": Plan("wall clock jumps (libfaketime)", faults.clock_jump,
                      n(len(faults.JUMPS), 40), faketime=True, cron=True, nap=0.3,
                      heartbeat=2.0, events=30, rate=20),
        "network": Plan("frame faults", faults.network_mix,
                        n(len(faults.NETWORK), 14 * len(faults.NETWORK)),
                        proxied=True),
    }


COLUMNS: list[tuple[str, Callable[[Report], object]]] = [
    ("faults", lambda r: r.faults),
    ("ok/unk/fail", lambda r: f"{r.ok}/{r.unknown}/{r.failed}"),
    ("503", lambda r: r.unavailable),
    ("runs", lambda r: r.runs),
    ("steps", lambda r: r.steps_committed),
    ("execs", lambda r: r.executions),
    ("re-execs", lambda r: r.reexecutions),
    ("per fault", lambda r: f"{r.reexecutions / r.faults:.1f}" if r.faults else "-"),
    ("lost", lambda r: r.lost),
    ("dup runs", lambda r: r.dup_runs),
    ("stuck", lambda r: r.stuck + r.not_completed),
    ("rerun after ack", lambda r: r.reexec_after_ack),
    ("late stale", lambda r: r.stale_execs),
    ("dup commits", lambda r: r.dup_commits + r.wrong_values + r.unwitnessed),
    ("dup effects", lambda r: r.dup_effects + r.missing_effects),
    ("ticks (dup)", lambda r: f"{r.ticks} ({r.dup_ticks})" if r.ticks else "-"),
    ("early naps", lambda r: r.early_timers),
    ("integrity", lambda r: r.integrity),
    ("drain s", lambda r: f"{r.drain_s:.1f}"),
    ("s", lambda r: f"{r.seconds:.0f}"),
]


def table(names: list[str], reports: list[Report]) -> str:
    head = ["loop", *(c for c, _ in COLUMNS)]
    rows = [[name, *(str(f(r)) for _, f in COLUMNS)] for name, r in zip(names, reports,
                                                                         strict=True)]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True))
             for row in [head, *rows]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long", action="store_true", help="issue 13's counts (tens of minutes)")
    p.add_argument("--only", action="append", choices=sorted(plans(False)),
                   help="run only this loop (repeatable)")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000,
                   help="seed of every fault schedule (default: from the clock, printed)")
    p.add_argument("--cycles", type=int, help="faults per loop, instead of the form's count")
    args = p.parse_args(argv)
    chosen = {k: v for k, v in plans(args.long).items() if not args.only or k in args.only}
    print(f"chaos, {'long' if args.long else 'short'} form, seed {args.seed}", flush=True)
    names, reports = [], []
    for i, (name, plan) in enumerate(chosen.items()):
        if args.cycles:
            plan = replace(plan, cycles=args.cycles)
        if plan.backend == "postgres" and binaries() is None:
            print(f"  {name}: skipped (no PostgreSQL server binaries)", flush=True)
            continue
        if plan.faketime and faults.libfaketime() is None:
            print(f"  {name}: skipped (no libfaketime: apt-get install faketime)", flush=True)
            continue
        if plan.disk_mb and (why := faults.can_mount_tmpfs()):
            print(f"  {name}: skipped ({why})", flush=True)
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f"tether-chaos-{name}-"))
        report = faults.run(plan, tmp, seed=args.seed + i)
        if report.violations():  # keep the logs, ledger and history for reading
            report.notes.insert(0, f"logs, ledger and history kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"  {name}: {report.line()}", flush=True)
        names.append(name)
        reports.append(report)
    print()
    print(table(names, reports))
    broken = [(n, r) for n, r in zip(names, reports, strict=True) if r.violations()]
    for name, report in broken:
        print(f"\n{name} BROKE {report.violations()} (seed {report.name}); schedule "
              f"{report.schedule}")
        print("\n".join(report.notes[:50]))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
