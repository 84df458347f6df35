"""One gateway per SQLite file: a second one on a live database is refused, naming the first,
before it touches anything; the first one's runs go on as if nothing happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cluster import free_port
from tests.e2e.harness import E2E, clean_env, run_cli, step
from tests.helpers.waiting import bound

pytestmark = pytest.mark.e2e


def test_a_second_gateway_on_a_live_database_is_refused_and_harms_nothing(e2e: E2E) -> None:
    first = e2e.start_gateway()
    worker = e2e.start_worker()
    e2e.wait_workers(1)
    key = e2e.new_key()
    run_id = e2e.run_of(e2e.send("e2e/three", key=key, gate="b"))["id"]
    e2e.wait_started(key, "b", [worker.pid])  # leased, a step done, another running

    port, connect_port = free_port(), free_port()
    second = run_cli("-m", "gateway", "--dev", "--port", str(port), "--connect-port",
                     str(connect_port), "--db", e2e.cluster.db, cwd=e2e.workdir)

    e2e.check(second.returncode == 1, f"the second gateway was not refused: {second}")
    message = second.stderr
    assert f"pid {first.pid}" in message, message
    assert f":{e2e.cluster.http_port}" in message and f":{e2e.cluster.connect_port}" in message
    assert "another --db" in message and "PostgreSQL" in message
    holder = json.loads(Path(e2e.cluster.db.removeprefix("sqlite:///") + ".lock").read_text())
    assert holder["pid"] == first.pid and holder["http_port"] == e2e.cluster.http_port

    # The live gateway's lease was left alone: its run completes on the same worker, each
    # step once, with no checkpoint refused.
    e2e.open_gate(key)
    run = e2e.wait_final(run_id)
    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    assert e2e.step_counts(key) == {"a": 1, "b": 1, "c": 1}, e2e.logs()
    assert step(run, "b")["attempts"] == 1  # type: ignore[index]
    assert "checkpoint_refused" not in worker.log()

    migrate = run_cli("-m", "gateway", "migrate", "--db", e2e.cluster.db, cwd=e2e.workdir)
    assert migrate.returncode == 1 and f"pid {first.pid}" in migrate.stderr, migrate


def test_the_database_is_free_again_once_its_gateway_is_gone(e2e: E2E) -> None:
    first = e2e.start_gateway()
    first.kill()  # however it ends, the kernel drops its lock
    e2e.start_gateway()
    e2e.start_worker()
    e2e.wait_workers(1)
    key = e2e.new_key()
    run = e2e.wait_final(e2e.run_of(e2e.send("e2e/three", key=key))["id"])
    e2e.check(run["status"] == "Completed", f"run not completed: {run}")


def test_a_second_dev_gateway_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    """The first-hour mistake: two `python -m gateway --dev` in one project directory."""
    args = [sys.executable, "-m", "gateway", "--dev", "--log-format", "json"]
    ports = ["--port", str(free_port()), "--connect-port", str(free_port())]
    first = subprocess.Popen([*args, *ports], cwd=tmp_path, env=clean_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if "gateway_started" in line:
                break
        second = run_cli("-m", "gateway", "--dev", "--port", str(free_port()),
                         "--connect-port", str(free_port()), cwd=tmp_path)
        assert second.returncode == 1, second
        assert f"pid {first.pid}" in second.stderr
        assert ".tether/tether.db" in second.stderr
    finally:
        first.terminate()
        first.wait(timeout=bound(15))
