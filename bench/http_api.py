"""``python -m bench http``: how long the HTTP API takes to answer, one request at a time.

Starts a real gateway (SQLite, ``--dev``) and sends ``--requests`` requests of each kind over
one keep-alive connection, waiting for each answer before the next: ``GET /health`` (no
store access) and ``POST /e/dev`` with one event (durable: answered after its commit). A
median near 40 ms means responses wait for the client's delayed ACK (TCP_NODELAY is off).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.cluster import Cluster
from bench.throughput import _percentile


def _timed(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
           count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        times.append(time.perf_counter() - started)
        if answer.status != 200:
            raise RuntimeError(f"{method} {path}: {answer.status}")
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench http", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=500, help="requests of each kind")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        cluster = Cluster(Path(tmp), gateway_args=["--log-level", "warning"])
        try:
            cluster.start_gateway()
            conn = http.client.HTTPConnection("127.0.0.1", cluster.http_port, timeout=30)
            event = json.dumps({"name": "bench/ping", "data": {}}).encode()
            print(f"{args.requests} requests of each kind, one at a time, one connection:")
            for label, method, path, body in (("GET /health", "GET", "/health", None),
                                              ("POST /e (1 event)", "POST", "/e/dev", event)):
                times = _timed(conn, method, path, body, args.requests)
                print(f"  {label:<20} p50 {statistics.median(times) * 1e3:.2f} ms, "
                      f"p99 {_percentile(times, 0.99) * 1e3:.2f} ms", flush=True)
            conn.close()
        finally:
            cluster.stop()
    return 0
