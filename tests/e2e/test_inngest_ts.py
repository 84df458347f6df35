"""Apps on Inngest's official TypeScript SDK (connect mode, Node 20) run on ``--inngest``.

The app (``inngest_tsapp.mjs``) and the example (``examples/inngest-ts/app.mjs``) use the
pinned ``inngest`` npm package unmodified; npm installs it on first use (``.cache/``).
"""

from __future__ import annotations

import itertools
import shutil
import signal
from collections.abc import Iterator
from datetime import datetime

import pytest

from bench.cluster import ROOT, Cluster
from tests.e2e.harness import log_events, step
from tests.e2e.inngest_support import InngestApps, node_apps

pytestmark = pytest.mark.e2e


@pytest.fixture
def sdk(cluster: Cluster) -> Iterator[InngestApps]:
    yield node_apps(cluster)


def test_every_step_kind_runs_once_and_a_retry_ends_in_step_failed(sdk: InngestApps) -> None:
    gateway = sdk.start_gateway("--log-level", "debug")
    sdk.start_app()
    sdk.wait_apps(1)
    run = sdk.run_of(sdk.send("ts/flow", key="k1", n=1))
    sdk.wait_run(run["id"], lambda r: r["status"] == "Waiting", "waiting for ts/go")
    sdk.send("ts/go", key="other")
    sdk.send("ts/go", key="k1", hello=1)
    done = sdk.wait_final(run["id"])
    sdk.check(done["status"] == "Completed", f"run ended {done['status']}: {done['error']}")
    assert done["output"] == {"a": {"n": 2}, "p": ["P1", "P2"], "got": {"key": "k1", "hello": 1},
                              "kid": {"doubled": 42}, "sent": 1,
                              "flaky": "failed: always broken"}
    kinds = {s["id"]: (s["kind"], s["status"]) for s in done["steps"]}
    assert kinds == {"a": ("run", "Completed"), "p1": ("run", "Completed"),
                     "p2": ("run", "Completed"), "nap": ("sleep", "Completed"),
                     "wait": ("wait", "Completed"), "call": ("invoke", "Completed"),
                     "send": ("run", "Completed"), "flaky": ("run", "Failed")}
    flaky = step(done, "flaky")
    assert flaky is not None and flaky["attempts"] == 2
    assert sdk.step_counts("k1") == {"a": 1, "p1": 1, "p2": 1, "flaky": 2}
    sent = sdk.cluster.get("/v1/events?name=ts/sent")["data"]
    assert [e["data"] for e in sent] == [{"key": "k1"}]
    # TypeScript streamed some steps within a request (/v1/checkpoint/{run}/async).
    assert log_events(gateway, "inngest_steps_streamed")


def test_a_non_retriable_error_fails_the_run_at_once_and_on_failure_runs(sdk: InngestApps) -> None:
    sdk.start_gateway()
    sdk.start_app()
    sdk.wait_apps(1)
    run = sdk.wait_final(sdk.run_of(sdk.send("ts/boom", key="b"))["id"])
    assert run["status"] == "Failed"
    assert run["error"]["message"] == "nope"
    # The SDK's on_failure handler is a function on Inngest's failure event: Tether's here.
    handled = sdk.wait(lambda: [r for r in sdk.cluster.get(
        "/v1/runs?function_id=tsapp/boom-failure")["data"] if r["status"] == "Completed"],
        "the on_failure handler ran")
    assert handled[0]["output"] == {"failed": "ts/boom", "error": "nope"}


def test_kill_9_of_the_sdk_worker_mid_step_resumes_on_another(sdk: InngestApps) -> None:
    sdk.start_gateway()
    first = sdk.start_app("tsapp-1")
    sdk.wait_apps(1)
    run = sdk.run_of(sdk.send("ts/slow", key="k9"))
    sdk.wait_started("k9", "held", pids=[first.pid])
    second = sdk.start_app("tsapp-2")
    sdk.wait_apps(2)
    first.kill()
    sdk.open_gate("k9")
    done = sdk.wait_final(run["id"])
    assert done["status"] == "Completed" and done["output"] == 3
    assert sdk.step_counts("k9") == {"first": 1, "held": 2}
    assert {e.pid for e in sdk.started("k9", "held")} == {first.pid, second.pid}


def test_sigterm_pauses_the_sdk_worker_and_its_in_flight_step_finishes(sdk: InngestApps) -> None:
    sdk.start_gateway()
    first = sdk.start_app("tsapp-1")
    sdk.wait_apps(1)
    run = sdk.run_of(sdk.send("ts/slow", key="kt"))
    sdk.wait_started("kt", "held", pids=[first.pid])
    first.signal(signal.SIGTERM)
    assert sdk.cluster.gateway is not None
    gateway = sdk.cluster.gateway
    sdk.wait(lambda: log_events(gateway, "inngest_worker_paused"), "the gateway saw WORKER_PAUSE")
    sdk.open_gate("kt")
    sdk.wait_step_completed(run["id"], "held")
    assert first.popen.wait(timeout=20) == 0
    sdk.start_app("tsapp-2")
    done = sdk.wait_final(run["id"])
    assert done["status"] == "Completed" and done["output"] == 3
    assert sdk.step_counts("kt") == {"first": 1, "held": 1}


def test_the_canonical_example_runs_and_its_throttle_holds(cluster: Cluster) -> None:
    """examples/inngest-ts: throttle 3 a minute (GCRA, burst 1: one start every 20 s), two
    steps. Five events at once: the first run completes, the others wait for their slots."""
    apps = node_apps(cluster)
    shutil.copy(ROOT / "examples" / "inngest-ts" / "app.mjs", apps.workdir / "example.mjs")
    apps.command = [*apps.command[:-1], "example.mjs"]
    apps.prefix = ""
    apps.start_gateway()
    apps.start_app("example")
    apps.wait_apps(1)
    ids = [apps.run_of(apps.send("auto/sync.request", n=i))["id"] for i in range(5)]
    first = apps.wait_final(ids[0])
    assert first["status"] == "Completed" and first["output"] == {"saved": 2}
    assert [s["id"] for s in first["steps"]] == ["get-data", "save-data"]
    held = [apps.get_run(i) for i in ids[1:]]
    assert [r["status"] for r in held] == ["Queued"] * 4
    assert all(r["waiting"]["option"] == "throttle" for r in held)
    slots = [datetime.fromisoformat(r["waiting"]["until"]) for r in held]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(slots)]
    assert all(19 <= gap <= 21 for gap in gaps), gaps


def test_with_a_signing_key_the_sdk_in_production_mode_is_let_in(sdk: InngestApps) -> None:
    """Without --dev: TypeScript sends the hash with the ``signkey-<env>-`` prefix kept."""
    key = "signkey-prod-" + "7c4f9e2a1b8d3f6e0a5c9b2d4e7f1a3c6b8d0e2f4a6c8e1b3d5f7a9c0e2b4d6f"
    sdk.event_key = "evtkey-" + "3b7d9f1a5c2e8b4d6f0a1c3e5b7d9f2a"
    sdk.start_gateway("--signing-key", key, "--event-key", sdk.event_key)
    sdk.headers = {"Authorization": f"Bearer {key}"}
    sdk.start_app(INNGEST_DEV="0", INNGEST_SIGNING_KEY=key)
    sdk.wait_apps(1)
    run = sdk.wait_final(sdk.run_of(sdk.send("ts/child", v=5))["id"])
    assert run["status"] == "Completed" and run["output"] == {"doubled": 10}
