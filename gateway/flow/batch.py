"""Batch: events grouped per key; a run starts with ``max_size`` events, or ``timeout`` after
the first.

Inngest's semantics (``batchEvents``): the run gets the events in arrival order; a batch closes
when it is full or when ``timeout`` has passed since its first event, whichever comes first.
An event arriving after the timeout (the batch is due but not yet started) opens the next
batch; it never joins one that is closing. The ``if_`` filter (events that fail it get a run
of their own) is the caller's: it decides before calling here.

Inngest keeps open batches in Redis with a TTL; Tether keeps them in the store (one row per
open batch, one per event in it), so an accepted event survives a kill -9.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchConfig:
    max_size: int
    timeout: float

    def __post_init__(self) -> None:
        if self.max_size < 1 or not self.timeout > 0:
            raise ValueError(f"batch needs max_size >= 1 and timeout > 0: {self}")


@dataclass(frozen=True)
class OpenBatch:
    first_at: float
    events: tuple[str, ...]

    def deadline(self, config: BatchConfig) -> float:
        return self.first_at + config.timeout


@dataclass(frozen=True)
class BatchStep:
    """After one event: ``start`` lists batches to start now (oldest first); ``open`` is open."""

    start: tuple[tuple[str, ...], ...]
    open: OpenBatch | None


def due(batch: OpenBatch, now: float, config: BatchConfig) -> bool:
    """True when ``batch`` must start: its timeout has come."""
    return now >= batch.deadline(config)


def on_event(batch: OpenBatch | None, event_id: str, now: float, config: BatchConfig) -> BatchStep:
    """Add one event of the key to its open batch (opening one if needed)."""
    start: list[tuple[str, ...]] = []
    if batch is not None and due(batch, now, config):
        start.append(batch.events)
        batch = None
    events = (batch.events if batch is not None else ()) + (event_id,)
    first = batch.first_at if batch is not None else now
    if len(events) >= config.max_size:
        start.append(events)
        return BatchStep(tuple(start), None)
    return BatchStep(tuple(start), OpenBatch(first, events))
