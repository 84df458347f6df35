"""``python -m bench [NAME] [options]``: print figures of the hot paths.

    throughput   events -> 3-step runs through a gateway and workers: steps/s, latencies
    latency      event -> run completed p50/p90/p99, open loop (events on a fixed schedule,
                 from a sender process of its own) at 50% and 80% of the maximum the
                 gateway sustains that way (searched), and under light load
    waits        cost of matching one event against 10,000 runs waiting for events
    sleeps       10,000 concurrent 1 s sleeps: how late they wake (p50/p99)
    scale        throughput on SQLite, and on PostgreSQL with 1, 2 and 3 gateways
    http         HTTP API answer time, one request at a time (GET /health, POST /e)
    intake       events/s through POST /e (batches of 1 and 100) and a signed webhook,
                 with p50/p99 of the answer
    cron         10,000 cron functions ticking at once: how late their runs are (p50/p99)
    flow         the throughput function with concurrency keys and with throttle keys over
                 1,000 tenants, against none: what flow control costs
    dashboard    the dashboard's pages and filters over 1,000,000 stored runs (p50/p99)
    state        throughput, latencies, gateway RSS, start-up and 10,000 sleeps' lateness
                 with 1,000,000 completed and 100,000 queued runs stored, against empty
    takeover     PostgreSQL, 3 gateways under load: a gateway killed (kill -9) or stopped
                 (SIGTERM), and how soon its runs complete through the others
    commits      CPU and wall time of a light-load run's two commits through the engine,
                 in-process (SQLite; no HTTP, no sockets): the fixed cost of a commit
    engineload   CPU per run of the engine's loop thread and SQLite writer under load,
                 in-process (no HTTP, no sockets): A/B figures with little noise
    cpu          CPU ms the gateway and the worker spend per 1,000 runs of the 3-step
                 function (steady under load from other processes, unlike wall time)
    bare         the reference pipeline (websockets + msgpack + uvloop + SQLite group commit,
                 nothing else): the floor the throughput figure is a ratio of
    frames       µs per message of the socket's hot messages: decode, encode, and the
                 worker building a checkpoint (in this process)
    styles       steps/s of the 3-step function with async, def and lambda step callables
                 and as a def function, each against async in the same run
    chaos        fault loops (kill -9, SIGSTOP, PostgreSQL faults, ...) under load, with exact
                 accounting: 0 lost, 0 re-runs after acknowledgement, 0 stuck; --long for
                 the full counts
    peers        the same 3-step workload on DBOS Transact (PostgreSQL) and on Tether (SQLite,
                 PostgreSQL): steps/s, light-load latency p50/p99, Tether/DBOS ratios
                 (needs `pip install dbos`; without it, Tether alone)
    all          every benchmark with its default options

``python -m bench NAME --help`` lists a benchmark's options. With no name: throughput.
"""

from __future__ import annotations

import sys

from bench import (
    bare,
    commits,
    cpu,
    cron,
    dashboard,
    engineload,
    flow,
    frames,
    http_api,
    intake,
    latency,
    peers,
    scale,
    sleeps,
    state,
    styles,
    takeover,
    throughput,
    waits,
)
from bench.chaos import main as chaos

BENCHMARKS = {"throughput": throughput.main, "waits": waits.main, "sleeps": sleeps.main,
              "scale": scale.main, "http": http_api.main, "takeover": takeover.main,
              "intake": intake.main, "cron": cron.main, "flow": flow.main, "cpu": cpu.main,
              "dashboard": dashboard.main, "state": state.main, "chaos": chaos.main,
              "peers": peers.main, "latency": latency.main, "styles": styles.main,
              "frames": frames.main, "commits": commits.main,
              "engineload": engineload.main, "bare": bare.main}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name = argv[0] if argv and not argv[0].startswith("-") else "throughput"
    rest = argv[1:] if argv and not argv[0].startswith("-") else argv
    if name == "all":
        for bench in BENCHMARKS.values():
            if code := bench([]):
                return code
            print(flush=True)
        return 0
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n{__doc__}", file=sys.stderr)
        return 2
    return BENCHMARKS[name](rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
