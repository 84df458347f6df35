"""The command lines of SPEC §3: help, refusing to start without a key, worker auth, migrate."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from bench.cluster import free_port
from tests.e2e.harness import E2E, log_events, run_cli

pytestmark = pytest.mark.e2e

GATEWAY_OPTIONS = {
    "--host": "TETHER_HOST",
    "--port": "TETHER_PORT",
    "--connect-port": "TETHER_CONNECT_PORT",
    "--db": "TETHER_DB",
    "--signing-key": "TETHER_SIGNING_KEY",
    "--event-key": "TETHER_EVENT_KEY",
    "--dev": "TETHER_DEV",
    "--retry-base": "TETHER_RETRY_BASE",
    "--heartbeat-interval": "TETHER_HEARTBEAT_INTERVAL",
    "--log-format": "TETHER_LOG_FORMAT",
    "--traces": "TETHER_TRACES",
    "--trace-url": "TETHER_TRACE_URL",
}
WORKER_OPTIONS = {
    "--gateway": "TETHER_GATEWAY_URL",
    "--concurrency": "TETHER_CONCURRENCY",
    "--instance-id": "TETHER_INSTANCE_ID",
    "--signing-key": "TETHER_SIGNING_KEY",
    "--drain-timeout": "TETHER_DRAIN_TIMEOUT",
    "--traces": "TETHER_TRACES",
}
KEY = "signkey-dT25LeJE48-y0QWLiTyAR-9XD1krsY1cFZz9cQfkgHE"
EVENT_KEY = "evtkey-MFuYiPUODFbl8RW7emXlYw"


def help_entries(text: str) -> dict[str, str]:
    """``--option`` -> its whole ``--help`` entry, continuation lines joined."""
    entries: dict[str, str] = {}
    flags: list[str] = []
    for line in text.splitlines():
        if re.match(r"^  -", line):
            flags = re.findall(r"--[a-z][a-z-]*", line.strip().split("  ")[0])
            for flag in flags:
                entries[flag] = line.strip()
        elif flags and line.startswith("   ") and line.strip():
            for flag in flags:
                entries[flag] += " " + line.strip()
        else:
            flags = []
    return entries


@pytest.mark.parametrize(("module", "options"), [("gateway", GATEWAY_OPTIONS),
                                                 ("worker", WORKER_OPTIONS)])
def test_help_lists_every_option_with_its_env_var(tmp_path: Path, module: str,
                                                  options: dict[str, str]) -> None:
    result = run_cli("-m", module, "--help", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    entries = help_entries(result.stdout)
    for option, env in options.items():
        assert option in entries, f"{option} missing from help:\n{result.stdout}"
        assert env in entries[option], f"{option} does not name {env}:\n{entries[option]}"
    if module == "worker":
        assert "MODULE:APP" in result.stdout


def test_gateway_without_dev_or_signing_key_refuses_to_start(tmp_path: Path) -> None:
    result = run_cli("-m", "gateway", "--host", "127.0.0.1", "--port", str(free_port()),
                     "--connect-port", str(free_port()),
                     "--db", f"sqlite:///{tmp_path / 'tether.db'}", cwd=tmp_path)

    assert result.returncode != 0, result
    assert "signing key" in result.stderr.lower(), result.stderr
    assert "--signing-key" in result.stderr and "--dev" in result.stderr, result.stderr


def test_migrate_creates_the_schema_and_exits(tmp_path: Path) -> None:
    db = tmp_path / "data" / "tether.db"

    first = run_cli("-m", "gateway", "migrate", "--db", f"sqlite:///{db}", cwd=tmp_path)
    again = run_cli("-m", "gateway", "migrate", "--db", f"sqlite:///{db}", cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr  # nothing left to apply is not an error
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"events", "runs", "steps", "functions"} <= tables, tables


def test_worker_with_a_wrong_signing_key_is_refused_and_leased_nothing(e2e: E2E) -> None:
    gw = e2e.start_gateway("--signing-key", KEY, "--event-key", EVENT_KEY)
    e2e.headers = {"Authorization": f"Bearer {KEY}"}
    e2e.event_key = EVENT_KEY
    # A worker with the right key registers the app (so events start runs), then leaves.
    first = e2e.start_worker("--signing-key", KEY, name="first-worker")
    e2e.wait_workers(1)
    e2e.check(first.stop() == 0, "the first worker did not stop cleanly")
    e2e.wait_workers(0)

    bad = e2e.start_worker("--signing-key", "signkey-wrong", name="bad-worker")  # weak, and wrong
    e2e.wait(lambda: log_events(gw, "worker_refused"), "the gateway to refuse the worker")
    key = e2e.new_key()
    run_id = e2e.run_of(e2e.send("e2e/three", key=key))["id"]

    # The worker keeps trying (it never gives up) and keeps being refused, while the run waits.
    seen = len(log_events(gw, "worker_refused"))
    e2e.wait(lambda: len(log_events(gw, "worker_refused")) > seen,
             "the worker to try again with the run queued", timeout=30)
    assert e2e.get_run(run_id)["status"] == "Queued"
    assert e2e.workers_connected() == []
    assert e2e.ledger(key) == []
    refusals = log_events(bad, "gateway_refused")
    e2e.check(refusals, "the worker did not log the refusal")
    assert "signing key" in refusals[0]["message"], refusals[0]
    assert bad.alive()

    good = e2e.start_worker("--signing-key", KEY, name="good-worker")
    run = e2e.wait_final(run_id)

    e2e.check(run["status"] == "Completed", f"run not completed: {run}")
    assert {e.pid for e in e2e.ledger(key)} == {good.pid}
    (connected,) = e2e.workers_connected()
    assert connected["instance_id"].endswith(f"-{good.pid}")
