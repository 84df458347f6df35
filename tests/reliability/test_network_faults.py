"""Network faults between workers and gateway, short form, through the seeded frame proxy.

Each wire fault of :data:`bench.chaos.faults.NETWORK` in turn (delay, duplicate, reorder,
drop in either direction, truncate/reset, half-open, flap), then the accounting: nothing lost,
nothing committed twice, every run completed within the heal window.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import faults
from bench.chaos.proxy import Faults
from tests.reliability.support import accounted

pytestmark = pytest.mark.e2e


def test_every_wire_fault_in_turn_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    plan = faults.Plan("frame faults", faults.network_mix, cycles=len(faults.NETWORK),
                       proxied=True)
    report = faults.run(plan, tmp_path, seed=21)
    accounted(report)
    # Each spell injected something (the stats of the proxy, per spell, in the schedule).
    assert all(not line.endswith(": {}") for line in report.schedule), report.schedule


def test_frames_dropped_gateway_to_worker_leave_no_run_stuck(tmp_path: Path) -> None:
    """Lost grants are sent again (the gateway hears no answer): no run stays leased to a
    worker that never heard of it."""
    plan = faults.Plan("drop down", faults.network(Faults(drop=0.1, direction="down")),
                       cycles=1, proxied=True, events=30, settle=6.0)
    report = faults.run(plan, tmp_path, seed=22)
    accounted(report)
