"""The first-hour messages of the command lines (issue 8 item 17), as a user sees them.

Each is run as a user types it (``python -m worker ...``, ``python -m gateway ...``) and must
end in one clear line, never a traceback.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bench.cluster import free_port
from tests.e2e.harness import E2E, log_events, run_cli
from tests.helpers.postgres import SERVER

pytestmark = pytest.mark.e2e

APP = """
from worker import App, TriggerEvent
from greeting import WORD

app = App("files")
billing = App("billing")


@app.function(trigger=TriggerEvent("files/hello"))
async def hello(ctx):
    return WORD


def helper():
    return 1
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with ``shop/myapp.py`` importing its neighbour ``shop/greeting.py``."""
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "myapp.py").write_text(APP)
    (folder / "greeting.py").write_text("WORD = 'hello'\n")
    return tmp_path


def worker_error(project: Path, spec: str) -> str:
    """Run ``python -m worker SPEC`` against no gateway; it must refuse at once."""
    result = run_cli("-m", "worker", spec, "--gateway", f"ws://127.0.0.1:{free_port()}/connect",
                     cwd=project / "shop", timeout=20)
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_missing_attribute_is_named_with_the_apps_the_module_has(project: Path) -> None:
    assert worker_error(project, "myapp:typo") == (
        "error: module 'myapp' has no attribute 'typo'; it has myapp:app, myapp:billing")


def test_an_attribute_that_is_not_an_app_says_what_it_is(project: Path) -> None:
    assert worker_error(project, "myapp:helper") == (
        "error: 'myapp:helper' is a function, not a worker.App; it has myapp:app, myapp:billing")


def test_a_module_without_apps_says_so(project: Path) -> None:
    assert worker_error(project, "greeting:app") == (
        "error: module 'greeting' has no attribute 'app'; it has no worker.App at module level")


def test_a_missing_file_is_named(project: Path) -> None:
    message = worker_error(project, "./nope.py:app")
    assert message.startswith("error: './nope.py:app': no file './nope.py' (from ")


def test_a_missing_module_is_named(project: Path) -> None:
    assert worker_error(project, "nomodule:app") == (
        "error: cannot import 'nomodule': No module named 'nomodule'")


def test_a_file_path_serves_the_app_with_its_neighbours_importable(e2e: E2E,
                                                                  project: Path) -> None:
    e2e.start_gateway()
    # Run from another folder: only the file's own folder makes `greeting` importable.
    worker = e2e.cluster.start_worker(f"{project / 'shop'}/myapp.py:app",
                                      args=("--log-format", "json"), name="file-worker")
    e2e.wait_workers(1)
    e2e.wait(lambda: log_events(worker, "gateway_connected"), "the worker to connect")
    run_id = e2e.run_of(e2e.send("files/hello"))["id"]
    run = e2e.wait_final(run_id)
    e2e.check(run["status"] == "Completed" and run["output"] == "hello", f"run: {run}")


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_missing_postgres_database_is_one_line(tmp_path: Path, command: str) -> None:
    name = f"tether_missing_{uuid.uuid4().hex[:8]}"
    url = SERVER.rsplit("/", 1)[0] + "/" + name
    args = (["migrate", "--db", url] if command == "migrate" else
            ["--dev", "--host", "127.0.0.1", "--port", str(free_port()),
             "--connect-port", str(free_port()), "--db", url])
    result = run_cli("-m", "gateway", *args, cwd=tmp_path, timeout=60)

    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error:")]
    assert line.startswith("error: cannot open the database at "), line
    if "does not exist" in line:  # a server is there: the hint names the database
        assert line.endswith(f"create it first (createdb {name}, or CREATE DATABASE {name})")
    else:
        assert "check --db (TETHER_DB)" in line
