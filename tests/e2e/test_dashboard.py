"""The dashboard in a real browser (Debian's chromium driven by Playwright), as a new user.

A real gateway and worker serve a small app; the tests click through every page, save a
screenshot of each (the folder is printed), find a completed run by filtering, read its
timeline, cancel a sleeping run with the button, filter by text, CEL and time, cancel and
replay a filtered set in bulk (counted, then confirmed), watch a function's counts move, read
a retried step and a child run on a timeline, and log in outside ``--dev`` (a wrong key is
refused; a read-only key sees runs but cannot cancel them).
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.harness import E2E, run_cli

pytestmark = pytest.mark.e2e

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="pip install playwright (the test extra)")
CHROMIUM = shutil.which("chromium")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
APP_SOURCE = Path(__file__).with_name("dashapp.py")
#: How long a page may take to show what a test waits for, in milliseconds.
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; "
                    "`python3 dev.py test` installs it)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    print(f"\ndashboard screenshots: {folder}")
    return folder


def serve(e2e: E2E, *gateway_args: str, worker_args: tuple[str, ...] = ()) -> None:
    shutil.copy(APP_SOURCE, e2e.workdir / "dashapp.py")
    e2e.start_gateway(*gateway_args)
    e2e.cluster.start_worker("dashapp:app", args=("--log-format", "json", *worker_args))


def test_find_a_run_read_its_timeline_cancel_a_sleeper(e2e: E2E, browser: Any,
                                                        shots: Path) -> None:
    serve(e2e)
    e2e.wait(lambda: e2e.workers_connected(), "the worker connected")
    done = e2e.run_of(e2e.send("dash/order", order="A-17"))["id"]
    e2e.check(e2e.wait_final(done)["status"] == "Completed", "the order run completed")
    sleeper = e2e.run_of(e2e.send("dash/nap"))["id"]
    e2e.wait_run(sleeper, lambda r: r["status"] == "Sleeping", "asleep")

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(WAIT_MS)
    page.goto(e2e.cluster.api + "/")
    page.screenshot(path=str(shots / "runs.png"), full_page=True)

    # Find the completed order run by filtering.
    page.select_option("select[name=function_id]", "dash/order")
    page.select_option("select[name=status]", "Completed")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**/?function_id=dash%2Forder&status=Completed*")
    rows = page.locator("#runs-rows tr[data-run]")
    assert rows.count() == 1, page.content()
    assert page.locator(f"tr[data-run='{sleeper}']").count() == 0
    page.screenshot(path=str(shots / "runs-filtered.png"), full_page=True)

    # Open it: each step is a bar on the timeline, its output one click away.
    page.click(f"a[href='/runs/{done}']")
    page.wait_for_url(f"**/runs/{done}")
    assert page.inner_text("#run-status") == "Completed"
    lanes = page.locator("#timeline .lane").evaluate_all(
        "els => els.map(e => e.dataset.step)")
    assert lanes == ["queued", "fetch", "charge", "notify"], lanes
    track = page.locator("#timeline .lane[data-step='fetch'] .track").bounding_box()
    boxes = [page.locator(f"#timeline .lane[data-step='{step}'] .bar").bounding_box()
             for step in ("fetch", "charge", "notify")]
    # One after the other on one axis: each starts no earlier than the one before, and
    # together they span no more than the run (each has a minimum width of 0.5%).
    assert boxes[0]["x"] <= boxes[1]["x"] <= boxes[2]["x"], boxes
    assert sum(b["width"] for b in boxes) <= track["width"] * 1.05, (boxes, track)
    assert '"paid": "charged 20"' in page.inner_text("#run-output")
    page.click("tr[data-step='charge'] summary")
    assert "charged 20" in page.inner_text("tr[data-step='charge'] pre")
    page.screenshot(path=str(shots / "run-completed.png"), full_page=True)

    # Cancel the sleeper with the button (confirming) and watch its status change.
    page.goto(e2e.cluster.api + f"/runs/{sleeper}")
    assert page.inner_text("#run-status") == "Sleeping"
    assert '"reason"' in page.inner_text("#waiting")
    page.screenshot(path=str(shots / "run-sleeping.png"), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    page.wait_for_selector("#run-status:has-text('Cancelled')")
    assert page.locator("#cancel").count() == 0
    assert e2e.get_run(sleeper)["status"] == "Cancelled"
    page.screenshot(path=str(shots / "run-cancelled.png"), full_page=True)

    # The runs page updates itself: a new run appears without a reload.
    page.goto(e2e.cluster.api + "/")
    fresh = e2e.run_of(e2e.send("dash/order", order="B-2"))["id"]
    page.wait_for_selector(f"tr[data-run='{fresh}']")

    # Paging: newest first, 20 to a page, the next page through "Older runs".
    e2e.cluster.send([{"name": "dash/order", "data": {"order": f"P-{i}"}} for i in range(21)])
    page.goto(e2e.cluster.api + "/?function_id=dash%2Forder")
    first = page.locator("#runs-rows tr[data-run]").evaluate_all(
        "els => els.map(e => e.dataset.run)")
    page.click("#older")
    second = page.locator("#runs-rows tr[data-run]").evaluate_all(
        "els => els.map(e => e.dataset.run)")
    assert len(first) == 20 and len(second) == 3, (first, second)
    assert first + second == sorted(first + second, reverse=True)
    assert {done, fresh} <= set(first + second)

    # Replay the completed run from its page: a new run of the same event completes.
    page.goto(e2e.cluster.api + f"/runs/{done}")
    page.click("#replay")
    page.wait_for_selector("#message:has-text('replay of')")
    replayed = page.url.rsplit("/", 1)[-1].split("?")[0]
    assert replayed != done
    e2e.check(e2e.wait_final(replayed)["status"] == "Completed", "the replay completed")

    # Functions, Workers, Events (sending a test event from the form).
    page.click("nav >> text=Functions")
    assert page.locator("tr[data-function='dash/order']").count() == 1
    assert "dash/order" in page.inner_text("tr[data-function='dash/order']")
    assert "event dash/order" in page.inner_text("tr[data-function='dash/order']")
    nightly = page.inner_text("tr[data-function='dash/nightly']")
    assert "cron 0 3 * * *" in nightly and "T03:00:00" in nightly, nightly
    page.screenshot(path=str(shots / "functions.png"), full_page=True)
    page.click("nav >> text=Workers")
    (worker,) = e2e.workers_connected()
    row = page.inner_text(f"tr[data-instance='{worker['instance_id']}']")
    assert "dash" in row and f"{worker['capacity']}" in row, row
    page.screenshot(path=str(shots / "workers.png"), full_page=True)
    page.click("nav >> text=Events")
    page.fill("input[name=name]", "dash/order")
    page.fill("textarea[name=data]", '{"order": "C-3"}')
    page.click("#send")
    page.wait_for_selector("#sent")
    (sent,) = page.inner_text("#sent .mono").split()
    run = e2e.run_of(sent)
    page.reload()
    assert page.locator(f"tr[data-event='{sent}'] a[href='/runs/{run['id']}']").count() == 1
    page.screenshot(path=str(shots / "events.png"), full_page=True)
    page.fill("textarea[name=data]", "[1]")
    page.fill("form.send input[name=name]", "dash/order")
    page.click("#send")
    assert "'data' must be a JSON object" in page.inner_text("#send-error")
    page.close()


def test_filters_bulk_actions_counts_and_a_timeline_of_retries_and_children(
        e2e: E2E, browser: Any, shots: Path) -> None:
    serve(e2e)
    e2e.wait(lambda: e2e.workers_connected(), "the worker connected")
    orders = [e2e.run_of(e2e.send("dash/order", order=o))["id"] for o in ("A-1", "B-2", "A-3")]
    nappers = [e2e.run_of(e2e.send("dash/nap", who="x"))["id"] for _ in range(2)]
    for run_id in nappers:
        e2e.wait_run(run_id, lambda r: r["status"] == "Sleeping", "asleep")
    for run_id in orders:
        e2e.wait_final(run_id)
    api = e2e.cluster.api
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(WAIT_MS)

    def listed(query: str) -> list[str]:
        page.goto(api + "/?" + query)
        return page.locator("#runs-rows tr[data-run]").evaluate_all(
            "els => els.map(e => e.dataset.run)")

    # Text in the event's data, a CEL filter, a time range; a bad CEL says what is wrong.
    page.goto(api + "/")
    page.select_option("select[name=function_id]", "dash/order")
    page.fill("input[name=text]", "a-")
    page.click("#filters button[type=submit]")
    page.wait_for_selector("#clear")
    rows = page.locator("#runs-rows tr[data-run]")
    assert rows.evaluate_all("els => els.map(e => e.dataset.run)") == [orders[2], orders[0]]
    page.screenshot(path=str(shots / "runs-text.png"), full_page=True)
    assert listed("if=" + quote('event.data.order == "B-2"')) == [orders[1]]
    assert listed("function_id=dash%2Forder&from=2999-01-01T00%3A00") == []
    assert set(listed("function_id=dash%2Forder&to=2999-01-01T00%3A00")) == set(orders)
    listed("if=" + quote("event.data.order >"))
    assert "'if'" in page.inner_text("#problem")
    # A run that starts later says when.
    (later,) = e2e.cluster.send({"name": "dash/order", "data": {"order": "L-1"},
                                 "ts": int((time.time() + 3600) * 1000)})
    delayed = e2e.run_of(later)["id"]
    assert listed("function_id=dash%2Forder&status=Queued") == [delayed]
    assert "scheduled for" in page.inner_text(f"tr[data-run='{delayed}']")

    # Bulk cancel what the filter selects: a count, a confirmation, then the result.
    page.goto(api + "/?function_id=dash%2Fnapper")
    page.click("#bulk-cancel")
    assert page.inner_text("#count").startswith("2 runs will be cancelled")
    page.screenshot(path=str(shots / "bulk-cancel-confirm.png"), full_page=True)
    page.click("#confirm")
    assert page.inner_text("#done").startswith("2 runs cancelled")
    assert {e2e.get_run(r)["status"] for r in nappers} == {"Cancelled"}
    # ... and replay them: new runs of the same events.
    page.click("#back")
    page.click("#bulk-replay")
    assert page.inner_text("#count").startswith("2 runs will be replayed")
    page.click("#confirm")
    assert page.inner_text("#done").startswith("2 runs replayed")
    replays = page.locator("#done ~ details a").evaluate_all("els => els.map(e => e.textContent)")
    assert len(replays) == 2 and not set(replays) & set(nappers)
    page.screenshot(path=str(shots / "bulk-replayed.png"), full_page=True)

    # Functions: counts per status move without a reload; throttled keys are listed.
    page.goto(api + "/functions")
    completed = "tr[data-function='dash/order'] [data-count=Completed]"
    assert page.inner_text(completed) == "Completed 3"
    e2e.send("dash/slow", user="ann")
    e2e.send("dash/slow", user="ann")
    e2e.send("dash/slow", user="ann")
    e2e.wait_final(e2e.run_of(e2e.send("dash/order", order="C-9"))["id"])
    page.wait_for_selector(f"{completed}:has-text('Completed 4')")
    page.wait_for_selector("tr[data-function='dash/slow'] tr[data-key='ann']")
    options = page.inner_text("tr[data-function='dash/slow'] td.options")
    assert "throttle" in options and '"key":"event.data.user"' in options, options
    page.screenshot(path=str(shots / "functions-counts.png"), full_page=True)

    # A retried step's attempts and backoff, then its child run, on one axis, linked.
    flaky = e2e.run_of(e2e.send("dash/flaky"))["id"]
    e2e.check(e2e.wait_final(flaky)["status"] == "Completed", "the flaky run completed")
    page.goto(api + f"/runs/{flaky}")
    lanes = page.locator("#timeline .lane").evaluate_all("els => els.map(e => e.dataset.step)")
    assert lanes[:4] == ["queued", "call #1", "call backoff", "call #2"], lanes
    assert "child" in lanes and lanes[-1] == "↳ dash/order", lanes
    boxes = [page.locator(f"#timeline .lane[data-step='{s}'] .bar").bounding_box()
             for s in ("call #1", "call backoff", "call #2", "child", "↳ dash/order")]
    assert all(a["x"] <= b["x"] + 1 for a, b in pairwise(boxes)), boxes
    assert boxes[1]["width"] > boxes[0]["width"]  # the 1 s backoff outlasts the attempt
    page.screenshot(path=str(shots / "run-retries-children.png"), full_page=True)
    page.click("#timeline .lane[data-kind=child] .label a")
    page.wait_for_selector(f"a[href='/runs/{flaky}']")
    assert page.inner_text("#run-status") == "Completed"
    page.close()


def test_login_outside_dev(e2e: E2E, browser: Any, shots: Path) -> None:
    signing, event_key = "signkey-" + secrets.token_urlsafe(32), secrets.token_hex(16)
    made = run_cli("-m", "gateway", "keys", "create", "--kind", "api", "--read-only",
                   "--db", e2e.cluster.db, cwd=e2e.workdir)
    assert made.returncode == 0, made.stderr
    read_only = next(w for w in made.stdout.split() if w.startswith("apikey-"))
    key_id = made.stderr.split()[2]  # "api key ID stored (read-only); ..."
    serve(e2e, "--signing-key", signing, "--event-key", event_key, "--key-refresh", "0.2",
          worker_args=("--signing-key", signing))
    e2e.headers = {"authorization": f"Bearer {signing}"}
    e2e.event_key = event_key
    e2e.wait(lambda: e2e.workers_connected(), "the worker connected")
    sleeper = e2e.run_of(e2e.send("dash/nap"))["id"]
    e2e.wait_run(sleeper, lambda r: r["status"] == "Sleeping", "asleep")

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(e2e.cluster.api + f"/runs/{sleeper}")
    page.wait_for_url("**/login?next=*")
    page.screenshot(path=str(shots / "login.png"), full_page=True)

    page.fill("input[name=key]", "apikey-" + secrets.token_urlsafe(32))
    page.click("form.login button")
    assert "not a signing key or API key" in page.inner_text("#login-error")
    assert context.cookies() == []
    page.screenshot(path=str(shots / "login-refused.png"), full_page=True)

    # A read-only key: the run is shown, with no Cancel button, and a forged post is refused.
    page.fill("input[name=key]", read_only)
    page.click("form.login button")
    page.wait_for_url(f"**/runs/{sleeper}")
    assert page.inner_text("#run-status") == "Sleeping"
    assert "read-only" in page.inner_text("#identity")
    assert page.locator("#cancel").count() == 0
    assert page.locator("#replay").count() == 0
    (cookie,) = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert read_only not in cookie["value"]
    csrf = page.locator("header input[name=csrf]").get_attribute("value")
    refused = page.request.post(e2e.cluster.api + f"/runs/{sleeper}/cancel",
                                form={"csrf": csrf}, max_redirects=0)
    assert refused.status == 403 and "read-only" in refused.json()["error"]
    assert e2e.get_run(sleeper)["status"] == "Sleeping"
    page.screenshot(path=str(shots / "run-read-only.png"), full_page=True)
    refused = page.request.post(e2e.cluster.api + "/runs/bulk", max_redirects=0,
                                form={"csrf": csrf, "action": "cancel", "confirm": "1"})
    assert refused.status == 403 and "read-only" in refused.json()["error"]
    assert e2e.get_run(sleeper)["status"] == "Sleeping"
    page.click("nav >> text=Runs")
    assert page.locator("#runs-rows tr[data-run]").count() == 1
    assert page.locator("#bulk-cancel, #bulk-replay").count() == 0
    page.click("nav >> text=Events")
    assert page.locator("form.send").count() == 0  # no test events from a read-only key
    page.click(f"a[href='/runs/{sleeper}']")

    # Log out; the signing key may cancel, and only with the session's CSRF token.
    page.click("header form button")
    page.wait_for_url("**/login")
    page.goto(e2e.cluster.api + f"/runs/{sleeper}")
    page.fill("input[name=key]", signing)
    page.click("form.login button")
    page.wait_for_url(f"**/runs/{sleeper}")
    forged = page.request.post(e2e.cluster.api + f"/runs/{sleeper}/cancel",
                               form={"csrf": "guess"}, max_redirects=0)
    assert forged.status == 403 and "CSRF" in forged.json()["error"]
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    page.wait_for_selector("#run-status:has-text('Cancelled')")
    page.screenshot(path=str(shots / "run-cancelled-after-login.png"), full_page=True)
    context.close()

    # A session made with a stored key ends when the key is revoked.
    other = browser.new_context()
    watcher = other.new_page()
    watcher.set_default_timeout(WAIT_MS)
    watcher.goto(e2e.cluster.api + "/login")
    watcher.fill("input[name=key]", read_only)
    watcher.click("form.login button")
    watcher.wait_for_url(e2e.cluster.api + "/")
    assert watcher.locator("#identity").count() == 1
    revoked = run_cli("-m", "gateway", "keys", "revoke", key_id, "--db", e2e.cluster.db,
                      cwd=e2e.workdir)
    assert revoked.returncode == 0, revoked.stderr
    e2e.wait(lambda: "/login" in other.request.get(e2e.cluster.api + "/", max_redirects=0)
             .headers.get("location", ""), "the revoked key's session to end")
    other.close()
