"""Counters for ``GET /metrics`` (Prometheus text format), kept by the engine.

Plain integers bumped on the hot path; the text is built only when scraped.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class Metrics:
    events_accepted: int = 0
    events_duplicate: int = 0
    runs_created: int = 0
    runs_completed: int = 0
    runs_failed: int = 0
    leases_granted: int = 0
    checkpoints_committed: int = 0
    checkpoints_refused: int = 0
    batches_committed: int = 0
    batches_failed: int = 0
    #: items of a batch that failed alone (the rest of their batch was applied)
    items_failed: int = 0

    def render(self, gauges: dict[str, float]) -> str:
        """Counters (``tether_*_total``) and the given gauges, one line each."""
        lines = []
        for f in fields(self):
            name = f"tether_{f.name}_total"
            lines += [f"# TYPE {name} counter", f"{name} {getattr(self, f.name)}"]
        for name, value in gauges.items():
            lines += [f"# TYPE tether_{name} gauge", f"tether_{name} {value}"]
        return "\n".join(lines) + "\n"
