"""``python -m bench throughput --json`` writes what it prints, for comparing runs.

Only the shape and the accounting: the figures are wall-clock, printed, never asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import throughput

pytestmark = pytest.mark.e2e


def test_throughput_bench_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    code = throughput.main(["--events", "100", "--batch", "50", "--light", "5",
                            "--concurrency", "50", "--json", str(out)])
    assert code == 0
    figures = json.loads(out.read_text())
    assert figures["options"]["events"] == 100
    assert figures["steps_per_s"] > 0 and figures["events_per_s"] > 0
    for phase in ("light", "load"):
        for hop in ("start", "completed"):
            assert figures[phase][hop]["p50_ms"] <= figures[phase][hop]["p99_ms"]
    assert figures["gateway_peak_rss_mib"] > 0
