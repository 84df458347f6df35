"""What the reliability tests share: the accounting assertion, and proofs that a fault bit."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from bench.chaos.checker import Report


def accounted(report: Report) -> None:
    """Every promise kept, or the figures, the schedule and what broke."""
    assert report.faults > 0, report.line()
    assert report.events > 0 and report.completed == report.runs == report.events, (
        report.line())
    assert not report.violations(), "\n".join(
        [report.line(), f"schedule: {report.schedule}", *report.notes[:40]])


def jumped_ahead(folder: Path) -> float:
    """How far ahead of real time the gateway's latest log line is stamped (its wall clock)."""
    latest = 0.0
    for path in folder.glob("*-gateway.log"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"timestamp"' in line:
                stamp = json.loads(line).get("timestamp")
                if stamp:
                    latest = max(latest, datetime.fromisoformat(stamp).timestamp())
    return latest - time.time()
