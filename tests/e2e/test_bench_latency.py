"""``python -m bench latency`` runs end to end with tiny sizes and writes its figures.

Only that it runs and accounts for every run sent: the figures themselves are wall-clock
and are printed by the benchmark, never asserted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import latency

pytestmark = pytest.mark.e2e


def test_latency_bench_runs_every_phase_and_writes_json(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    out = tmp_path / "latency.json"
    code = latency.main(["--max-events", "60", "--probes", "2", "--probe-duration", "0.3",
                         "--fractions", "0.1,0.2", "--duration", "0.5", "--light", "10",
                         "--json", str(out)])
    assert code == 0
    figures = json.loads(out.read_text())
    # The fractions are of the open-loop maximum the probes found; both maxima are kept.
    assert figures["batch_max_steps_per_s"] > 0
    assert len(figures["probes"]) == 2
    assert figures["max_steps_per_s"] == figures["open_max_steps_per_s"] > 0
    phases = figures["phases"]
    assert [p["name"] for p in phases] == ["light", "10% of max", "20% of max"]
    assert phases[0]["runs"] == 10
    for phase in phases:
        assert phase["runs"] >= 1
        assert phase["p50"] <= phase["p99"] <= phase["max"]
        assert set(phase["hops"]) == set(latency.HOPS)
        assert {"sender", "gateway", "worker"} <= set(phase["cpu"])
        assert phase["connections"] >= 1
    printed = capsys.readouterr().out
    assert "event -> run completed, open loop" in printed
    assert "open-loop maximum" in printed and "batch maximum" in printed
    assert "sender late p99" in printed
    assert "median / p99 ms per hop" in printed


def test_a_given_maximum_skips_both_searches_and_lone_events_are_sent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "latency.json"
    code = latency.main(["--max", "300", "--of", "batch", "--tick", "0", "--sender-nice", "0",
                         "--fractions", "0.5", "--duration", "0.5", "--light", "5",
                         "--json", str(out)])
    assert code == 0
    figures = json.loads(out.read_text())
    assert figures["max_steps_per_s"] == 300
    assert figures["batch_max_steps_per_s"] is None
    assert figures["open_max_steps_per_s"] is None
    assert "probes" not in figures
    assert figures["sender_nice"] == os.getpriority(os.PRIO_PROCESS, 0)
    # 50 events/s for 0.5 s, each in a POST of its own.
    assert [p["runs"] for p in figures["phases"]] == [5, 25]
    assert "(given)" in capsys.readouterr().out
