"""The three-step workload on DBOS Transact, the peer ``python -m bench peers`` compares with.

The same function as bench/app.py's ``three-steps``, written as DBOS's documentation writes
it: a ``@DBOS.workflow`` calling three ``@DBOS.step`` functions, each step's output
checkpointed in the system database (PostgreSQL) before the next one runs. Workflows arrive
on a DBOS queue (the analogue of Tether's event trigger), enqueued by a ``DBOSClient`` in
another process. ``python -m bench.dbos_app --db URL`` runs the DBOS process: it launches
DBOS, registers the queue, prints ``ready`` and runs workflows until SIGTERM or SIGINT.

Needs the ``dbos`` package (``pip install dbos``, or ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from dbos import DBOS, DBOSConfig

APP_NAME = "tether-bench"
APP_VERSION = "bench-1"
QUEUE = "bench"
WORKFLOW = "three-steps"


@DBOS.step()
def work(value: int) -> int:
    return value


@DBOS.workflow(name=WORKFLOW)
def three_steps(i: int) -> int:
    return work(1) + work(2) + work(3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dbos_app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="PostgreSQL URL of DBOS's system database")
    p.add_argument("--worker-concurrency", type=int, default=100,
                   help="workflows of the queue running at once in this process")
    p.add_argument("--poll", type=float, default=0.01,
                   help="seconds between two looks of the queue thread for work")
    p.add_argument("--pool", type=int, default=40, help="system database connection pool")
    args = p.parse_args(argv)
    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": args.db,
        "sys_db_pool_size": args.pool,
        "application_version": APP_VERSION,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    DBOS.register_queue(QUEUE, worker_concurrency=args.worker_concurrency,
                        polling_interval_sec=args.poll)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    DBOS.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
