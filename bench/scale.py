"""``python -m bench scale``: the same load on SQLite, and on PostgreSQL with 1, 2, 3 gateways.

Each configuration runs :func:`bench.throughput.measure` with one worker per gateway (each
worker also knows the other gateways' URLs) and prints one line: durable steps/s and
event -> run completed latency at light load and under load. All processes share this
machine's cores, so more gateways here measure the cost of coordination, not a gain.

On PostgreSQL a second line says what the database did in the throughput phase (see
bench/pgstats.py): CPU ms per 1,000 runs of the gateways together and of their backends,
commits/s, WAL syncs/s (server-wide), NOTIFY notes/s between the gateways, and what the
backends were sampled doing: executing (``active``), waiting for the gateway to send the next
statement (``idle in transaction Client:ClientRead``), for the commit's fsync
(``IO:WALSync``), or for a lock another transaction holds (``Lock:...``). That line shows
where the store saturates. ``--json PATH`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from bench.throughput import STEPS_PER_RUN, measure, ms

CONFIGS = (("sqlite", 1), ("postgres", 1), ("postgres", 2), ("postgres", 3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10000, help="events per configuration")
    p.add_argument("--light", type=int, default=100, help="light-load events per configuration")
    p.add_argument("--gateways", default="1,2,3",
                   help="PostgreSQL gateway counts to run, comma-separated")
    p.add_argument("--no-sqlite", action="store_true", help="skip the SQLite line")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = p.parse_args(argv)
    configs = [(kind, n) for kind, n in CONFIGS if kind == "postgres" or not args.no_sqlite]
    wanted = {int(n) for n in args.gateways.split(",") if n}
    configs = [(k, n) for k, n in configs if k == "sqlite" or n in wanted]
    configs += [("postgres", n) for n in sorted(wanted) if ("postgres", n) not in configs]
    print(f"{'store':<10} {'gateways':>8} {'steps/s':>9}  light-load completion"
          f"{'':<14}under-load completion", flush=True)
    out: list[dict[str, Any]] = []
    for kind, gateways in configs:
        f = measure(db_kind=kind, gateways=gateways, events=args.events, light=args.light,
                    progress=False, watch=True)
        print(f"{kind:<10} {gateways:>8} {f.steps_per_s:>9,.0f}  {ms(f.light_end):<34} "
              f"{ms(f.load_end)}", flush=True)
        runs = args.events
        row: dict[str, Any] = {
            "store": kind, "gateways": gateways, "steps_per_s": f.steps_per_s,
            "events_per_s": f.events_per_s,
            "gateway_cpu_ms_per_1000_runs": f.gateway_cpu_ms,
            "load_end_p50_ms": statistics.median(f.load_end) * 1000 if f.load_end else None,
        }
        if f.pg is not None:
            pg = f.pg
            print(f"{'':<10} {'':>8} gateways {f.gateway_cpu_ms:.0f} ms, backends "
                  f"{pg.backend_cpu_s * 1e6 / runs:.0f} ms per 1,000 runs; "
                  f"{pg.per_s(pg.commits):,.0f} commits/s "
                  f"({runs * STEPS_PER_RUN / max(pg.commits, 1):.0f} steps each), "
                  f"{pg.per_s(pg.wal_syncs):,.0f} WAL syncs/s, "
                  f"{pg.per_s(pg.notes):,.1f} notes/s ({pg.note_bytes / max(pg.notes, 1):.0f} B)"
                  f"; backends: {pg.waits()}", flush=True)
            row["postgres"] = pg.as_dict()
            row["postgres_cpu_ms_per_1000_runs"] = pg.backend_cpu_s * 1e6 / runs
        out.append(row)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0
