"""Process faults under load, short form (the long form: ``python -m bench chaos --long``).

Each test runs a seeded fault loop over real gateways and workers and ends with the exact
accounting of :mod:`bench.chaos.checker`: nothing acknowledged lost, no step run again after
its result was committed, no run left unfinished, every effect taken once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import faults
from bench.chaos.pgserver import binaries
from tests.reliability.support import accounted, jumped_ahead

pytestmark = pytest.mark.e2e


def test_worker_kill_9_loses_nothing_and_reruns_nothing_acknowledged(tmp_path: Path) -> None:
    plan = faults.Plan("worker kill -9", faults.kill_worker, cycles=3)
    report = faults.run(plan, tmp_path, seed=11)
    accounted(report)
    assert report.schedule[0].startswith("kill -9 worker"), report.schedule


def test_frozen_worker_sigstop_sigcont_cannot_commit_a_stale_result(tmp_path: Path) -> None:
    plan = faults.Plan("worker SIGSTOP/SIGCONT", faults.stop_worker, cycles=2)
    report = faults.run(plan, tmp_path, seed=12)
    accounted(report)
    assert report.schedule[0].startswith("SIGSTOP worker"), report.schedule


def test_gateway_kill_9_on_sqlite_loses_no_acknowledged_event(tmp_path: Path) -> None:
    plan = faults.Plan("gateway kill -9 (SQLite)", faults.kill_gateway, cycles=2)
    report = faults.run(plan, tmp_path, seed=13)
    accounted(report)
    assert report.integrity == "ok", report.integrity
    assert report.failed > 0, "no request met a dead gateway: the kills did not bite"


@pytest.mark.skipif(binaries() is None, reason="needs the PostgreSQL server binaries "
                    "(initdb, pg_ctl) for a server of the test's own; python3 dev.py test "
                    "installs PostgreSQL")
def test_two_gateways_on_postgres_survive_kills_terminated_backends_and_a_restart(
        tmp_path: Path) -> None:
    plan = faults.Plan("PostgreSQL, 2 gateways", faults.postgres_mix, cycles=3,
                       backend="postgres", gateways=2, workers=2)
    report = faults.run(plan, tmp_path, seed=14)
    accounted(report)
    assert "PostgreSQL crash-restart" in report.schedule, report.schedule


@pytest.mark.skipif(bool(faults.can_mount_tmpfs()), reason=f"disk full needs a size-limited "
                    f"tmpfs: {faults.can_mount_tmpfs()}")
def test_disk_full_answers_503_with_retry_after_and_recovers_without_a_restart(
        tmp_path: Path) -> None:
    plan = faults.Plan("disk full (SQLite on tmpfs)", faults.disk_full, cycles=2,
                       disk_mb=24, pad=20_000)
    report = faults.run(plan, tmp_path, seed=15)
    accounted(report)  # no 200 without a commit: every ok event has its run
    assert report.unavailable > 0, f"the disk never filled: {report.line()}"
    assert report.integrity == "ok", report.integrity


def test_database_locked_from_outside_fails_no_run_and_loses_nothing(tmp_path: Path) -> None:
    plan = faults.Plan("outside write lock (SQLite)", faults.outside_lock, cycles=2)
    report = faults.run(plan, tmp_path, seed=16)
    accounted(report)
    assert report.integrity == "ok", report.integrity


@pytest.mark.skipif(faults.libfaketime() is None, reason="clock jumps need libfaketime: "
                    "apt-get install faketime (python3 dev.py test installs it as root)")
def test_wall_clock_jumps_cost_no_lease_and_no_tick_twice(
        tmp_path: Path) -> None:
    plan = faults.Plan("wall clock jumps (libfaketime)", faults.clock_jump,
                       cycles=len(faults.JUMPS), faketime=True, cron=True, nap=0.3,
                       heartbeat=2.0, events=30, rate=20)
    report = faults.run(plan, tmp_path, seed=17)
    accounted(report)
    assert report.reexecutions == 0, f"a clock jump cost a lease: {report.line()}"
    assert report.ticks > 0, report.line()
    assert jumped_ahead(tmp_path / "gw0") > 3000, "the gateway's clock never jumped"
