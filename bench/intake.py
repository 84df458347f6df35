"""``python -m bench intake``: events/s into a gateway, and how long each answer takes.

Starts a real gateway (SQLite, ``--dev``, no worker: the events match no function, so this
is the intake path alone: parse, check, commit) and, for ``--seconds`` each, keeps
``--clients`` keep-alive connections busy with one of:

- ``POST /e/dev`` with 1 event per request;
- ``POST /e/dev`` with 100 events per request;
- ``POST /webhooks/{id}``: a GitHub-signed webhook (HMAC check, CEL transform, one event).

Each request waits for its answer (200 once committed) before the next on its connection.
Prints events/s and p50/p99 of the answer time.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.cluster import Cluster
from bench.throughput import _percentile

SECRET = "bench-webhook-secret"
TRANSFORM = ('{"name": "bench/" + headers["x-github-event"], "data": body, '
             '"id": headers["x-github-delivery"]}')

#: (path, body, headers) of the next request, from the connection's sequence number.
Request = Callable[[int, int], tuple[str, bytes, dict[str, str]]]


def _load(port: int, make: Request, clients: int, seconds: float, per_request: int
          ) -> tuple[float, list[float]]:
    times: list[list[float]] = [[] for _ in range(clients)]
    stop = time.perf_counter() + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while time.perf_counter() < stop:
            path, body, headers = make(index, n)
            started = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            times[index].append(time.perf_counter() - started)
            if answer.status != 200:
                raise RuntimeError(f"POST {path}: {answer.status}")
            n += 1
        conn.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    flat = [t for ts in times for t in ts]
    return len(flat) * per_request / elapsed, flat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench intake", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="seconds of load per kind")
    p.add_argument("--clients", type=int, default=16, help="concurrent connections")
    args = p.parse_args(argv)
    json_headers = {"Content-Type": "application/json"}
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        cluster = Cluster(Path(tmp), gateway_args=["--log-level", "warning"])
        try:
            cluster.start_gateway()
            status, hook = cluster.request("POST", "/v1/webhooks", {
                "name": "bench", "transform": TRANSFORM,
                "verify": {"scheme": "github", "secret": SECRET}})
            if status != 201:
                raise RuntimeError(f"POST /v1/webhooks: {status} {hook}")

            def one(i: int, n: int) -> tuple[str, bytes, dict[str, str]]:
                return "/e/dev", json.dumps({"name": "bench/one", "data": {"n": n}}).encode(), \
                    json_headers

            def hundred(i: int, n: int) -> tuple[str, bytes, dict[str, str]]:
                return "/e/dev", json.dumps([{"name": "bench/many", "data": {"n": n, "k": k}}
                                             for k in range(100)]).encode(), json_headers

            def webhook(i: int, n: int) -> tuple[str, bytes, dict[str, str]]:
                body = json.dumps({"ref": "refs/heads/main", "n": n,
                                   "commits": [{"id": f"c{k}"} for k in range(3)]}).encode()
                sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                return hook["url"], body, {
                    **json_headers, "X-GitHub-Event": "push", "X-GitHub-Delivery": f"{i}-{n}",
                    "X-Hub-Signature-256": f"sha256={sig}"}

            print(f"intake, SQLite, {args.clients} connections, {args.seconds:g} s each "
                  "(answers after commit):")
            for label, make, per in (("POST /e, 1 event", one, 1),
                                     ("POST /e, 100 events", hundred, 100),
                                     ("POST /webhooks/{id}", webhook, 1)):
                rate, times = _load(cluster.http_port, make, args.clients, args.seconds, per)
                print(f"  {label:<22} {rate:>9,.0f} events/s   answer p50 "
                      f"{_percentile(times, 0.5) * 1e3:6.2f} ms, p99 "
                      f"{_percentile(times, 0.99) * 1e3:6.2f} ms", flush=True)
        finally:
            cluster.stop()
    return 0
