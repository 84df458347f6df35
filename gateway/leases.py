"""When a worker is presumed dead: heartbeats, in memory, on the monotonic clock.

Rule: a worker that has sent nothing (heartbeat or any other message) for ``misses``
heartbeat intervals loses its socket, and with it every lease it holds; those runs go back to
the queue at once. Heartbeats are never written to the store (one write per beat per worker
saturates a database long before the workers do).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.registry import WorkerEntry


@dataclass(frozen=True, slots=True)
class Liveness:
    interval: float
    misses: int = 3

    @property
    def ttl(self) -> float:
        """How long a silent worker keeps its leases."""
        return self.interval * self.misses

    def expired(self, workers: Iterable[WorkerEntry], now: float) -> list[WorkerEntry]:
        """Workers silent for longer than :attr:`ttl` at monotonic time ``now``."""
        return [w for w in workers if now - w.last_seen > self.ttl]
