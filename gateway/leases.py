"""When a worker is presumed dead, and when a grant is presumed lost: in memory, on the
monotonic clock.

Rule 1: a worker that has sent nothing (heartbeat or any other message) for ``misses``
heartbeat intervals loses its socket, and with it every lease it holds; those runs go back to
the queue at once. Heartbeats are never written to the store (one write per beat per worker
saturates a database long before the workers do).

Rule 2: a lease grant the worker has not answered within a heartbeat interval is sent again,
until the worker answers it or the lease ends (:class:`Unanswered`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.registry import WorkerEntry
from protocol.messages import LeaseGranted


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


class Unanswered:
    """Lease grants a worker has neither accepted nor rejected yet, to send again.

    TCP loses nothing, but an intermediary (a proxy, a load balancer that drops a frame) can:
    a lost grant would leave its run leased to a worker that never heard of it, kept alive by
    that worker's heartbeats, for ever. The worker answers every grant at once, and answers a
    grant it already holds again (it never runs a lease twice), so a grant unanswered for
    ``after`` seconds is sent again until the worker answers it or the lease ends.
    """

    __slots__ = ("after", "pending")

    def __init__(self, after: float) -> None:
        self.after = after
        #: Run id -> (grant, sent at). Read it, never change it: the socket's pump looks a
        #: checkpoint's run up in it before calling :meth:`answered` (a call per checkpoint).
        self.pending: dict[str, tuple[LeaseGranted, float]] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def sent(self, grant: LeaseGranted, now: float) -> None:
        self.pending[grant.run_id] = (grant, now)

    def answered(self, run_id: str, fence: int) -> None:
        """The worker spoke of (run_id, fence): accepted, rejected or checkpointed it."""
        held = self.pending.get(run_id)
        if held is not None and held[0].fence == fence:
            del self.pending[run_id]

    def due(self, held: dict[str, int], now: float) -> list[LeaseGranted]:
        """Grants to send again at monotonic ``now``; ``held`` maps run id -> fence of the
        leases the worker still holds (a grant whose lease ended is forgotten)."""
        again: list[LeaseGranted] = []
        for run_id, (grant, at) in list(self.pending.items()):
            if held.get(run_id) != grant.fence:
                del self.pending[run_id]
            elif now - at >= self.after:
                self.pending[run_id] = (grant, now)
                again.append(grant)
        return again
