"""The client side of a chaos loop: events posted with ids of our own, every outcome kept.

Outcomes follow Jepsen's and Restate's: ``ok`` (a 2xx: the gateway says it is stored),
``failed`` (refused before anything could be written: connection refused, a 4xx) and
``unknown`` (a timeout, a reset, a 5xx: it may or may not be stored). After the faults heal,
every event not yet ``ok`` is posted again with the same id until it is, so each event must
end with exactly one run, and every event ever answered ``ok`` must have one.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK, FAILED, UNKNOWN = "ok", "failed", "unknown"


@dataclass(frozen=True)
class Request:
    """One POST of one event and what came of it."""

    event_id: str
    outcome: str
    status: int | None
    detail: str
    at: float  # time.monotonic() when the answer (or the error) came
    retry_after: str | None = None


def post_event(api: str, event: dict[str, Any], key: str = "dev", timeout: float = 3.0
               ) -> Request:
    """POST one event to ``api`` (``http://host:port``) and classify the outcome."""
    host, port = api.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    body = json.dumps(event).encode()
    try:
        conn.request("POST", f"/e/{key}", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        text = resp.read(2000).decode(errors="replace")
    except ConnectionRefusedError as exc:
        return Request(event["id"], FAILED, None, f"refused: {exc}", time.monotonic())
    except (OSError, http.client.HTTPException) as exc:  # timeout, reset, bad status line
        return Request(event["id"], UNKNOWN, None, f"{type(exc).__name__}: {exc}",
                       time.monotonic())
    finally:
        conn.close()
    retry_after = resp.getheader("Retry-After")
    if 200 <= resp.status < 300:
        outcome = OK
    elif 400 <= resp.status < 500 and resp.status not in (408, 429):
        outcome = FAILED
    else:
        outcome = UNKNOWN
    return Request(event["id"], outcome, resp.status, text[:200], time.monotonic(),
                   retry_after)


@dataclass
class Driver:
    """Posts events at ``rate`` per second on a thread, each to one of ``apis()``.

    ``make(n)`` builds the n-th event (without its id). The history is appended to
    ``history.jsonl`` in ``workdir`` as it grows, so a failed loop can be read afterwards.
    """

    apis: Callable[[], list[str]]
    workdir: Path
    count: int
    rate: float
    make: Callable[[int], dict[str, Any]]
    seed: int = 0
    history: list[Request] = field(default_factory=list)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def _record(self, request: Request) -> None:
        with self._lock:
            self.history.append(request)
            with (self.workdir / "history.jsonl").open("a") as out:
                out.write(json.dumps(request.__dict__) + "\n")

    def _post(self, event_id: str, rng: random.Random) -> Request:
        apis = self.apis()
        with self._lock:
            event = self.events[event_id]
        request = post_event(apis[rng.randrange(len(apis))], event)
        self._record(request)
        return request

    def start(self) -> None:
        """Open loop: event n goes at start + n / rate, however slow the answers are; at
        least ``count`` events, and on until :meth:`stop` (so faults always meet load)."""
        rng = random.Random(self.seed)

        def loop() -> None:
            start = time.monotonic()
            n = 0
            while n < self.count or not self._stopping.is_set():
                delay = start + n / self.rate - time.monotonic()
                if delay > 0 and self._stopping.wait(delay) and n >= self.count:
                    break
                event_id = f"chaos-{self.seed}-{n}"
                with self._lock:
                    self.events[event_id] = {**self.make(n), "id": event_id}
                self._post(event_id, rng)
                n += 1

        self._thread = threading.Thread(target=loop, name="chaos-driver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Post no more than ``count`` events (or what has been posted by now, if more)."""
        self._stopping.set()

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("the driver did not post every event in time")

    def outcomes(self) -> dict[str, list[str]]:
        with self._lock:
            out: dict[str, list[str]] = {e: [] for e in self.events}
            for r in self.history:
                out[r.event_id].append(r.outcome)
            return out

    def heal(self, timeout: float = 60.0) -> int:
        """Post every event never answered ``ok`` again, same id, until each is; the number
        still not accepted when ``timeout`` runs out (the API did not recover)."""
        rng = random.Random(self.seed + 1)
        deadline = time.monotonic() + timeout
        pending = [e for e, outs in self.outcomes().items() if OK not in outs]
        while pending:
            if time.monotonic() > deadline:
                return len(pending)
            pending = [e for e in pending if self._post(e, rng).outcome != OK]
            if pending:
                time.sleep(0.2)
        return 0
