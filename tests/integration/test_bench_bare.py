"""``python -m bench bare``, the reference pipeline the throughput figure is a ratio of, does
the durable work it claims: every event, run, lease, step and end is in its store when it
reports, so its figure is a floor for the same work, not for less.

The figure itself is measured by running the benchmark, never asserted here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench import bare
from bench.__main__ import BENCHMARKS
from bench.__main__ import main as bench_main


def test_every_event_run_and_step_is_stored_when_it_reports(tmp_path: Path) -> None:
    steps_per_s = bare.measure(events=450, batch=100, senders=2, concurrency=50, keep=tmp_path)
    assert steps_per_s > 0
    db = sqlite3.connect(tmp_path / "bare.db")
    assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (450,)
    assert db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall() == [
        (2, 450)]
    assert db.execute("SELECT COUNT(*) FROM steps").fetchone() == (450 * bare.STEPS_PER_RUN,)
    assert db.execute("SELECT COUNT(DISTINCT run_id) FROM steps").fetchone() == (450,)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_bare_is_a_benchmark_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCHMARKS["bare"] is bare.main
    with pytest.raises(SystemExit) as exit_:
        bench_main(["bare", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m bench bare" in out
    for flag in ("--events", "--batch", "--senders", "--concurrency", "--repeats", "--json"):
        assert flag in out
