"""``GET /metrics`` of an in-process gateway with a real worker, parsed as Prometheus does.

Values must move as runs are queued, leased and finished; nothing a client chooses (event
names, ids, keys) and no run id may ever become a label. Both backends.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics
from protocol import messages as m
from tests.helpers.waiting import eventually
from tests.integration.raw_worker import EVENT, RawWorker
from tests.integration.raw_worker import FUNCTION as RAW_FUNCTION
from worker import App, TriggerEvent

FUNCTION = "metrics-app/work"
#: Distinctive strings sent by clients: none may appear in the exposition.
SECRET_NAME = "metrics/zq-secret-name-7731"
SECRET_ID = "zq-secret-event-id-5521"
SECRET_KEY = "zq-secret-event-key-9904"
SECRET_DATA = "zq-secret-data-3318"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def make_app() -> App:
    app = App("metrics-app")

    @app.function(id="work", trigger=TriggerEvent("metrics/*"))
    async def work(ctx: Any) -> int:
        first: int = await ctx.step.run("one", lambda: 1)
        return first + await ctx.step.run("two", lambda: 2)

    return app


async def scrape(http: httpx.AsyncClient) -> tuple[str, Samples]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def test_metrics_move_as_runs_are_queued_leased_and_finished(harness):
    http = harness.http
    app = make_app()
    first = await harness.start_worker([app], concurrency=4)
    await first.drain()  # the app is registered; now no worker serves it
    _, task = harness.workers.pop()
    await asyncio.wait_for(task, 10)

    _, before = await scrape(http)
    assert value(before, "tether_runs_created_total") == 0
    assert value(before, "tether_queue_depth", function=FUNCTION) == 0
    assert value(before, "tether_workers_connected") == 0

    # Three runs queue up while no worker is connected.
    response = await http.post(f"/e/{SECRET_KEY}", json=[
        {"name": SECRET_NAME, "id": f"{SECRET_ID}-{i}", "data": {"note": SECRET_DATA}}
        for i in range(3)])
    assert response.status_code == 200, response.text
    run_ids = [(await harness.run_of(event_id))["id"] for event_id in response.json()["ids"]]

    async def queued() -> Samples | None:
        _, samples = await scrape(http)
        return samples if value(samples, "tether_queue_depth", function=FUNCTION) == 3 else None

    samples = await eventually(queued, 10, what="a queue depth of 3")
    assert value(samples, "tether_runs_created_total", function=FUNCTION) == 3
    assert value(samples, "tether_events_accepted_total") == 3
    assert value(samples, "tether_queue_oldest_age_seconds", function=FUNCTION) >= 0
    assert value(samples, "tether_runs_finished_total") == 0

    # A worker connects: the runs are leased and complete, the queue empties.
    await harness.start_worker([make_app()], concurrency=4)
    for run_id in run_ids:
        await harness.wait_status(run_id, "Completed")

    async def drained() -> Samples | None:
        _, samples = await scrape(http)
        return samples if value(samples, "tether_queue_depth", function=FUNCTION) == 0 else None

    samples = await eventually(drained, 10, what="an empty queue")
    finished = {"function": FUNCTION, "status": "Completed"}
    assert value(samples, "tether_runs_finished_total", **finished) == 3
    assert value(samples, "tether_run_duration_seconds_count", **finished) == 3
    assert value(samples, "tether_event_to_first_step_seconds_count", function=FUNCTION) == 3
    assert value(samples, "tether_queue_wait_seconds_count", function=FUNCTION) >= 3
    assert value(samples, "tether_leases_granted_total", function=FUNCTION) >= 3
    assert value(samples, "tether_steps_total", kind="run", status="Completed") == 6
    assert value(samples, "tether_checkpoints_total", kind="run_completed") == 3
    assert value(samples, "tether_commit_batch_size_count") >= 1
    assert value(samples, "tether_commit_seconds_count") >= 1
    assert value(samples, "tether_workers_connected") == 1
    assert value(samples, "tether_worker_slots_free") == 4
    assert value(samples, "tether_runs_in_flight") == 0
    assert value(samples, "tether_queue_oldest_age_seconds", function=FUNCTION) == 0
    # Families defined ahead of the features that feed them, at 0.
    assert value(samples, "tether_flow_skipped_total", reason="rate_limit") == 0
    assert value(samples, "tether_flow_delayed_total", reason="throttle") == 0
    assert ("tether_cron_ticks_missed_total" in
            {f.name + "_total" for f in text_string_to_metric_families(
                (await http.get("/metrics")).text)})

    # One more run: every counter and histogram count moves by one.
    (event_id,) = await harness.send({"name": "metrics/again"})
    run = await harness.run_of(event_id)
    await harness.wait_status(run["id"], "Completed")

    async def finished_counted() -> Samples | None:
        # The API reads the commit (on PostgreSQL, another connection) a moment before the
        # engine, back from that commit, counts it.
        _, now = await scrape(http)
        counted = value(now, "tether_runs_finished_total", **finished)
        return now if counted == value(samples, "tether_runs_finished_total", **finished) + 1 \
            else None

    after = await eventually(finished_counted, what="the metrics to count the run")
    for name, labels in [("tether_runs_finished_total", finished),
                         ("tether_run_duration_seconds_count", finished),
                         ("tether_runs_created_total", {"function": FUNCTION}),
                         ("tether_event_to_first_step_seconds_count", {"function": FUNCTION})]:
        assert value(after, name, **labels) == value(samples, name, **labels) + 1, name


async def test_no_client_string_or_run_id_is_ever_a_label(harness):
    http = harness.http
    await harness.start_worker([make_app()], concurrency=2)
    response = await http.post(f"/e/{SECRET_KEY}", json=[
        {"name": SECRET_NAME, "id": SECRET_ID, "data": {"note": SECRET_DATA}}])
    assert response.status_code == 200, response.text
    run = await harness.run_of(SECRET_ID)
    await harness.wait_status(run["id"], "Completed")
    await http.get(f"/v1/runs/{run['id']}")  # a route with a run id in its path
    await http.get(f"/v1/events/{SECRET_ID}/runs")
    await http.get(f"/nowhere/{SECRET_KEY}")  # unmatched: no route template at all
    await http.request("PROPFIND", f"/e/{SECRET_KEY}")  # a method of the client's choosing

    text, samples = await scrape(http)
    for secret in (SECRET_NAME, SECRET_ID, SECRET_KEY, SECRET_DATA, run["id"], "PROPFIND"):
        assert secret not in text, secret
    routes = {dict(labels)["route"] for (name, labels) in samples
              if name == "tether_http_request_seconds_count"}
    assert {"/e/{event_key}", "/v1/runs/{run_id}", "/v1/events/{event_id}/runs",
            "unmatched"} <= routes
    assert value(samples, "tether_http_request_seconds_count", route="/e/{event_key}",
                 method="POST", status="200") == 1
    assert value(samples, "tether_http_request_seconds_count", route="/e/{event_key}",
                 method="other") == 1


def test_function_labels_are_capped():
    """Past the cap, functions count as ``other``: the label set stays bounded."""
    metrics = Metrics(max_functions=2)
    labels = [metrics.function_label(f"app/fn{i}") for i in range(5)]
    assert labels == ["app/fn0", "app/fn1", "other", "other", "other"]
    assert metrics.function_label("app/fn0") == "app/fn0"


async def test_two_gateways_in_one_process_keep_their_own_counts(gateway_factory, tmp_path):
    one = await gateway_factory()
    two = await gateway_factory(db=f"sqlite:///{tmp_path / 'other.db'}")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{one.http_port}") as http:
        assert (await http.post("/e/dev", json={"name": "nobody/listens"})).status_code == 200
    assert one.metrics.registry.get_sample_value("tether_events_accepted_total") == 1
    assert two.metrics.registry.get_sample_value("tether_events_accepted_total") == 0


async def test_a_worker_lost_holding_a_lease_counts_it_lost_and_the_run_is_leased_again(
        harness):
    gw, http = harness.gateway, harness.http
    lost = await RawWorker.ready_on(gw.connect_port, instance_id="doomed")
    (event_id,) = await harness.send({"name": EVENT})
    lease = await lost.expect(m.LeaseGranted)
    await lost.close()  # gone without a drain: its lease is lost

    async def counted() -> Samples | None:
        _, samples = await scrape(http)
        return samples if value(samples, "tether_leases_lost_total") == 1 else None

    samples = await eventually(counted, 10, what="one lease counted lost")
    assert value(samples, "tether_leases_granted_total", function=RAW_FUNCTION) == 1
    # Another worker takes the run: a second lease, and no second first step.
    again = await RawWorker.ready_on(gw.connect_port, instance_id="heir")
    relet = await again.expect(m.LeaseGranted)
    assert relet.run_id == lease.run_id == (await harness.run_of(event_id))["id"]
    _, samples = await scrape(http)
    assert value(samples, "tether_leases_granted_total", function=RAW_FUNCTION) == 2
    assert value(samples, "tether_queue_wait_seconds_count", function=RAW_FUNCTION) == 2
    assert value(samples, "tether_event_to_first_step_seconds_count",
                 function=RAW_FUNCTION) == 1
    await again.close()


def test_flow_and_cron_families_take_only_bounded_labels():
    metrics = Metrics()
    metrics.flow("skipped", "rate_limit")
    metrics.flow("delayed", "throttle", 2)
    metrics.flow("skipped", "a reason with a key in it: user-42")
    metrics.cron_ticks_missed("app/nightly", 3)
    get = metrics.registry.get_sample_value
    assert get("tether_flow_skipped_total", {"reason": "rate_limit"}) == 1
    assert get("tether_flow_delayed_total", {"reason": "throttle"}) == 2
    assert get("tether_flow_skipped_total", {"reason": "other"}) == 1
    assert get("tether_cron_ticks_missed_total", {"function": "app/nightly"}) == 3


async def test_a_scrape_can_ask_for_some_families_only(harness):
    """``?name[]=`` (as Prometheus clients offer): a cheap read for a script polling one
    counter, here the runs finished."""
    response = await harness.http.get("/metrics", params=[
        ("name[]", "tether_runs_finished_total"), ("name[]", "tether_batches_committed_total")])
    assert response.status_code == 200
    names = {s.name for family in text_string_to_metric_families(response.text)
             for s in family.samples}
    assert names == {"tether_batches_committed_total"}  # no run has finished yet: no sample
    _, everything = await scrape(harness.http)
    assert len({name for name, _ in everything}) > 10
