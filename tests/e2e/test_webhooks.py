"""Webhooks and ``gateway send`` with real processes: a gateway (with keys) and a worker.

GitHub- and Stripe-style signed requests start runs that complete; wrongly signed ones get
401 and start nothing. ``python -m gateway send`` stores an event that starts a run, and
says clearly what is wrong when it cannot.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.cluster import Cluster
from tests.e2e.harness import E2E, run_cli
from tests.helpers.waiting import bound

pytestmark = pytest.mark.e2e

SIGNING = "signkey-dT25LeJE48-y0QWLiTyAR-9XD1krsY1cFZz9cQfkgHE"
EVENT_KEY = "evtkey-MFuYiPUODFbl8RW7emXlYw"
SECRET = "whsec_e2e-secret-for-webhooks"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("webhooks")) / "cluster",
                      gateway_args=["--retry-base", "0.05", "--log-format", "json"])
    e2e = E2E(cluster)
    e2e.headers = {"authorization": f"Bearer {SIGNING}"}
    e2e.event_key = EVENT_KEY
    try:
        e2e.start_gateway("--signing-key", SIGNING, "--event-key", EVENT_KEY)
        e2e.start_worker("--signing-key", SIGNING)
        e2e.wait_workers(1)
        yield e2e
    finally:
        cluster.stop()


def make(gw: E2E, transform: str, scheme: str) -> str:
    r = httpx.post(f"{gw.cluster.api}/v1/webhooks", headers=gw.headers, timeout=bound(10),
                   json={"name": scheme, "transform": transform,
                         "verify": {"scheme": scheme, "secret": SECRET}})
    gw.check(r.status_code == 201, r.text)
    url: str = r.json()["url"]
    return gw.cluster.api + url


def digest(message: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def completes(gw: E2E, event_id: str) -> None:
    run = gw.wait_final(gw.run_of(event_id)["id"])
    gw.check(run["status"] == "Completed", f"the webhook's run ended {run}")
    shown = gw.cluster.get(f"/v1/events/{event_id}", headers=gw.headers)
    gw.check(shown["run_ids"] == [run["id"]], f"the event log shows {shown}")


def test_github_signed_webhooks_start_runs_and_wrong_ones_are_refused(gw):
    url = make(gw, '{"name": "e2e/three", "data": {"key": body.key}, '
                   '"id": headers["x-github-delivery"]}', "github")
    body = json.dumps({"key": gw.new_key(), "ref": "refs/heads/main"}).encode()
    r = httpx.post(url, content=body, timeout=bound(10), headers={
        "x-github-delivery": "gh-1", "x-hub-signature-256": f"sha256={digest(body)}",
        "content-type": "application/json"})
    gw.check(r.status_code == 200 and r.json()["ids"] == ["gh-1"], r.text)
    completes(gw, "gh-1")
    wrong = httpx.post(url, content=body, timeout=bound(10), headers={
        "x-github-delivery": "gh-2", "x-hub-signature-256": f"sha256={digest(body, 'nope')}"})
    gw.check(wrong.status_code == 401, wrong.text)
    missing = gw.cluster.request("GET", "/v1/events/gh-2", headers=gw.headers)[0]
    gw.check(missing == 404, "a refused webhook stored its event")


def test_stripe_signed_webhooks_start_runs_and_stale_ones_are_refused(gw):
    url = make(gw, '{"name": "e2e/three", "data": {"key": body.data.object.key}, '
                   '"id": body.id}', "stripe")

    def stripe(body: bytes, t: int, secret: str = SECRET) -> dict[str, str]:
        return {"stripe-signature": f"t={t},v1={digest(f'{t}.'.encode() + body, secret)}"}

    body = json.dumps({"id": "evt_1", "data": {"object": {"key": gw.new_key()}}}).encode()
    r = httpx.post(url, content=body, headers=stripe(body, int(time.time())),
                   timeout=bound(10))
    gw.check(r.status_code == 200 and r.json()["ids"] == ["evt_1"], r.text)
    completes(gw, "evt_1")
    other = json.dumps({"id": "evt_2", "data": {"object": {"key": "x"}}}).encode()
    for headers in (stripe(other, int(time.time()) - 600), stripe(other, int(time.time()), "x")):
        r = httpx.post(url, content=other, headers=headers, timeout=bound(10))
        gw.check(r.status_code == 401, r.text)
    assert gw.cluster.request("GET", "/v1/events/evt_2", headers=gw.headers)[0] == 404


def test_gateway_send_stores_an_event_that_starts_a_run(gw):
    key = gw.new_key()
    done = run_cli("-m", "gateway", "send", "e2e/three", "--data", json.dumps({"key": key}),
                   "--id", "sent-1", cwd=gw.workdir, TETHER_API_URL=gw.cluster.api,
                   TETHER_EVENT_KEY=EVENT_KEY)
    gw.check(done.returncode == 0 and done.stdout.strip() == "sent-1",
             f"{done.returncode} {done.stdout} {done.stderr}")
    completes(gw, "sent-1")
    bad_key = run_cli("-m", "gateway", "send", "e2e/three", "--api-url", gw.cluster.api,
                      "--event-key", "wrong-key", cwd=gw.workdir)
    assert bad_key.returncode == 1 and "(401)" in bad_key.stderr, bad_key.stderr
    assert "--event-key" in bad_key.stderr
    bad_json = run_cli("-m", "gateway", "send", "e2e/three", "--data", "{key: 1}",
                       cwd=gw.workdir)
    assert bad_json.returncode == 2 and "--data is not valid JSON" in bad_json.stderr
    gone = run_cli("-m", "gateway", "send", "e2e/three", "--api-url", "http://127.0.0.1:9",
                   cwd=gw.workdir)
    assert gone.returncode == 1 and "could not reach the gateway" in gone.stderr
    reserved = run_cli("-m", "gateway", "send", "tether/function.failed",
                       "--api-url", gw.cluster.api, "--event-key", EVENT_KEY, cwd=gw.workdir)
    assert reserved.returncode == 1 and "reserved" in reserved.stderr
