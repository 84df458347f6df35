"""``python -m bench peers`` answers ``--help``, reports its figures, and works without DBOS.

The figures themselves are measured by running the benchmark, never asserted here; DBOS is an
optional extra (``bench``), so what needs it is skipped when it is absent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import peers
from bench.__main__ import BENCHMARKS
from bench.__main__ import main as bench_main

DBOS = peers.Row("DBOS", "PostgreSQL", 300.0, 40.0, 80.0, 16000.0, 2000, 200)
LITE = peers.Row("Tether", "SQLite", 15000.0, 4.0, 8.0, 400.0, 10000, 200)
PG = peers.Row("Tether", "PostgreSQL", 9000.0, 10.0, 16.0, 800.0, 10000, 200)


def test_peers_is_a_benchmark_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCHMARKS["peers"] is peers.main
    with pytest.raises(SystemExit) as exit_:
        bench_main(["peers", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m bench peers" in out
    assert "pip install dbos" in out
    for flag in ("--workflows", "--events", "--light", "--worker-concurrency", "--json"):
        assert flag in out


def test_table_gives_each_tether_store_its_ratio_to_dbos() -> None:
    text = peers.table([DBOS, LITE, PG])
    assert "DBOS (PostgreSQL)" in text
    assert "Tether/DBOS, SQLite" in text and "50.0x" in text and "0.10x" in text
    assert "Tether/DBOS, PostgreSQL" in text and "30.0x" in text and "0.25x" in text
    assert "16,000" in text and "0.025x" in text and "0.050x" in text


def test_figures_hold_rows_ratios_and_options() -> None:
    out = peers.figures([DBOS, LITE, PG], {"workflows": 2000})
    assert [r["system"] for r in out["rows"]] == ["DBOS", "Tether", "Tether"]
    assert out["ratios"]["sqlite"]["steps_per_s"] == 50.0
    assert math.isclose(out["ratios"]["postgresql"]["light_p99"], 0.2)
    assert math.isclose(out["ratios"]["sqlite"]["cpu_per_run"], 0.025)
    assert out["options"] == {"workflows": 2000}
    json.dumps(out)


def test_without_dbos_it_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    monkeypatch.setattr(peers, "dbos_version", lambda: None)
    path = tmp_path / "peers.json"
    assert peers.main(["--only", "dbos", "--json", str(path)]) == 0
    assert "pip install dbos" in capsys.readouterr().err
    assert json.loads(path.read_text())["rows"] == []


def test_the_dbos_workload_imports_when_dbos_is_installed() -> None:
    pytest.importorskip("dbos")
    from bench import dbos_app

    assert dbos_app.three_steps.__name__ == "three_steps"
    assert dbos_app.WORKFLOW == "three-steps"
