"""``python -m bench latency`` runs end to end with tiny sizes and writes its figures.

Only that it runs and accounts for every run sent: the figures themselves are wall-clock
and are printed by the benchmark, never asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import latency

pytestmark = pytest.mark.e2e


def test_latency_bench_runs_every_phase_and_writes_json(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    out = tmp_path / "latency.json"
    code = latency.main(["--max-events", "60", "--fractions", "0.1,0.2", "--duration", "0.5",
                         "--light", "10", "--json", str(out)])
    assert code == 0
    figures = json.loads(out.read_text())
    assert figures["max_steps_per_s"] > 0
    phases = figures["phases"]
    assert [p["name"] for p in phases] == ["light", "10% of max", "20% of max"]
    assert phases[0]["runs"] == 10
    for phase in phases:
        assert phase["runs"] >= 1
        assert phase["p50"] <= phase["p99"] <= phase["max"]
    assert set(phases[0]["hops"]) == set(latency.HOPS)
    printed = capsys.readouterr().out
    assert "event -> run completed, open loop" in printed
    assert "light load, median ms per hop" in printed
