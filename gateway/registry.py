"""Connected workers: what each serves, how much it may hold, and what it holds now.

In memory only: a worker's presence is its open socket, and nothing about it needs to survive
the gateway (a restarted gateway starts with no workers and every lease requeued).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gateway.store.base import WorkerSlots
from protocol.messages import Message


@dataclass(slots=True, eq=False)
class WorkerEntry:
    """One connected worker session."""

    session_id: str
    instance_id: str
    capacity: int
    functions: frozenset[str]
    apps: dict[str, str]  # app id -> version
    connected_at: float
    send: Callable[[Message], None]  # queue a message on this worker's socket
    close: Callable[[int, str], None]  # close this worker's socket with a code and reason
    in_flight: dict[str, int] = field(default_factory=dict)  # run id -> fence of its lease
    draining: bool = False
    last_seen: float = 0.0  # monotonic
    rank: int = 0

    def drop(self, run_id: str, fence: int) -> None:
        """The lease (run_id, fence) ended: free its slot, unless the run is held under a newer
        fence (a stale message about an older lease of the same run frees nothing)."""
        if self.in_flight.get(run_id) == fence:
            del self.in_flight[run_id]


class Registry:
    """The set of connected worker sessions."""

    def __init__(self) -> None:
        self._workers: dict[str, WorkerEntry] = {}
        self._versions: dict[str, tuple[float, str]] = {}  # app -> (connected_at, newest version)

    def add(self, worker: WorkerEntry) -> None:
        self._workers[worker.session_id] = worker
        for app, version in worker.apps.items():
            known = self._versions.get(app)
            if known is None or (known[1] != version and worker.connected_at >= known[0]):
                self._versions[app] = (worker.connected_at, version)
        self._rerank()

    def remove(self, session_id: str) -> WorkerEntry | None:
        worker = self._workers.pop(session_id, None)
        if worker is not None:
            self._rerank()
        return worker

    def get(self, session_id: str) -> WorkerEntry | None:
        return self._workers.get(session_id)

    def __iter__(self) -> Iterator[WorkerEntry]:
        return iter(list(self._workers.values()))

    def __len__(self) -> int:
        return len(self._workers)

    def free_slots(self) -> list[WorkerSlots]:
        """Workers that may take more runs now, for the next claim."""
        return [
            WorkerSlots(w.session_id, w.capacity, len(w.in_flight), w.functions, w.rank)
            for w in self._workers.values()
            if not w.draining and len(w.in_flight) < w.capacity
        ]

    def _rerank(self) -> None:
        """Workers on an older version of an app than the newest connected one rank lower.

        Old versions still get work when the new ones are full, and drain away as they
        disconnect (as Inngest prefers the newest connected version).
        """
        live = {app for w in self._workers.values() for app in w.apps}
        self._versions = {a: v for a, v in self._versions.items() if a in live}
        for w in self._workers.values():
            w.rank = sum(
                1 for app, version in w.apps.items() if self._versions[app][1] != version
            )
