"""Debounce: a key's run starts ``period`` after its last event, at most ``timeout`` after
its first.

Inngest's semantics: each event of a key pushes the pending run back to ``period`` after
itself, and the run gets the *last* event; ``timeout`` caps the delay counted from the first
event of the window, so a steady stream still starts a run every ``timeout``. An event that
arrives when the deadline has passed (the run is due but not yet started) opens a new window:
it never joins a run that is about to start.

Beyond Inngest, ``collect=True`` keeps every event of the window (``ctx.events``) in arrival
order, up to ``max_events``; the event that fills the bound closes the window at once (the run
starts now with all of them), so no event is ever dropped. Without ``collect`` the run gets the
last event only, as in Inngest.

State per (function, key): the pending window, :class:`Window`. The store keeps it as the
pending run's row (events and deadline), so a gateway restart loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Most events a collecting window holds by default (the batch limit's default).
MAX_EVENTS = 100


@dataclass(frozen=True)
class DebounceConfig:
    period: float
    timeout: float | None = None
    collect: bool = False
    max_events: int = MAX_EVENTS

    def __post_init__(self) -> None:
        if not self.period > 0 or (self.timeout is not None and not self.timeout > 0):
            raise ValueError(f"debounce needs period > 0 and timeout > 0: {self}")
        if self.max_events < 1:
            raise ValueError(f"debounce needs max_events >= 1: {self}")


@dataclass(frozen=True)
class Window:
    """A key's pending run: its events (ids, arrival order) and when it starts."""

    first_at: float
    deadline: float
    events: tuple[str, ...]


@dataclass(frozen=True)
class DebounceStep:
    """After one event: ``start`` lists windows to start now (oldest first); ``pending`` is open."""

    start: tuple[Window, ...]
    pending: Window | None


def due(window: Window, now: float) -> bool:
    """True when the window's run must start."""
    return now >= window.deadline


def on_event(window: Window | None, event_id: str, now: float,
             config: DebounceConfig) -> DebounceStep:
    """Add one event of the key to its pending window (opening one if needed)."""
    start: tuple[Window, ...] = ()
    if window is not None and due(window, now):
        start, window = (window,), None
    events: tuple[str, ...] = (event_id,)
    first = now
    if window is not None:
        first = window.first_at
        if config.collect:
            events = (*window.events, event_id)
    if config.collect and len(events) >= config.max_events:
        return DebounceStep((*start, Window(first, now, events)), None)  # full: start now
    deadline = now + config.period
    if config.timeout is not None:
        deadline = min(deadline, first + config.timeout)
    return DebounceStep(start, Window(first, deadline, events))
