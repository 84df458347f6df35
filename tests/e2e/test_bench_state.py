"""``python -m bench state`` runs end to end with tiny sizes, and its store is a real one."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench import state
from bench.cluster import ROOT

pytestmark = pytest.mark.e2e


def test_bench_state_runs_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "state.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "state", "--completed", "300", "--queued", "40",
         "--sleeps", "20", "--events", "60", "--light", "5", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "durable steps/s" in done.stdout
    figures = json.loads(out.read_text())
    for column in ("empty", "big"):
        assert {"steps_per_s", "light_end_p99_ms", "gateway_peak_rss_mib", "startup_s",
                "sleep_late_p99_ms"} <= figures[column].keys()


def test_the_big_store_holds_what_it_says(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    state.build(path, 100, 30, progress=False)
    db = sqlite3.connect(path)
    counts = dict(db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    assert counts == {"Completed": 100, "Queued": 30}
    (idle,) = db.execute("SELECT DISTINCT function_id FROM runs WHERE status = 'Queued'")
    assert idle == (state.IDLE_FUNCTION,)
    # the backlog is ready to run, and each run has its own event
    assert db.execute("SELECT COUNT(*) FROM runs WHERE status = 'Queued' "
                      "AND available_at <= queued_at").fetchone() == (30,)
    assert db.execute("SELECT COUNT(DISTINCT event_seq) FROM run_events").fetchone() == (130,)
