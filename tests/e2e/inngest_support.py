"""What the Inngest SDK end-to-end tests share: a gateway started with ``--inngest`` and SDK
app processes (Python or Node) dialling into it, as users would run them."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from bench.cluster import ROOT, Cluster, Process
from tests.e2e.harness import E2E
from tests.helpers.waiting import bound

HERE = Path(__file__).parent
#: The pinned TypeScript SDK, installed once per checkout (``.cache/`` is not committed).
INNGEST_JS = "inngest@4.24.0"
NODE_CACHE = ROOT / ".cache" / "inngest-js-4.24.0"


def inngest_js_modules() -> Path:
    """``node_modules`` holding the pinned TypeScript SDK, installed by npm on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the TypeScript SDK tests (Node >= 20)")
    modules = NODE_CACHE / "node_modules"
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    # Test processes run in parallel (pytest-xdist): one installs, the others wait for it.
    with (NODE_CACHE.parent / "inngest-js.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (modules / "inngest" / "package.json").exists():
            (NODE_CACHE / "package.json").write_text('{"private": true}\n')
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", INNGEST_JS],
                cwd=NODE_CACHE, capture_output=True, text=True, timeout=bound(600))
            if done.returncode != 0:
                raise RuntimeError(
                    f"npm install {INNGEST_JS} failed:\n{done.stdout}{done.stderr}")
    return modules


class InngestApps(E2E):
    """A gateway started with ``--inngest`` and SDK app processes dialling into it."""

    def __init__(self, cluster: Cluster, app: str, command: Sequence[str],
                 prefix: str) -> None:
        super().__init__(cluster)
        shutil.copy(HERE / app, self.workdir / app)
        self.command = [*command, app]
        self.prefix = prefix
        self.env = {"INNGEST_BASE_URL": cluster.api, "INNGEST_DEV": "1"}
        self.apps: list[Process] = []

    def start_gateway(self, *args: str) -> Process:
        return self.cluster.start_gateway("--inngest", *args)

    def start_app(self, name: str = "app", **env: str) -> Process:
        """The SDK app as its own process; its log is ``NN-name.log``."""
        self.cluster._count += 1
        log_path = self.workdir / f"{self.cluster._count:02d}-{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **env}
        full_env["PYTHONPATH"] = str(ROOT)
        with log_path.open("wb") as out:
            popen = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, env=full_env)
        proc = Process(name, popen, log_path)
        self.cluster.workers.append(proc)
        self.apps.append(proc)
        return proc

    def wait_apps(self, count: int) -> None:
        """Until ``count`` SDK processes of this app are connected."""
        self.wait(lambda: len([w for w in self.workers_connected()
                               if w["instance_id"].startswith(self.prefix)]) == count,
                  f"{count} Inngest SDK worker(s) connected")


def python_apps(cluster: Cluster) -> InngestApps:
    return InngestApps(cluster, "inngest_pyapp.py", [sys.executable], "pyapp-")


def node_apps(cluster: Cluster) -> InngestApps:
    modules = inngest_js_modules()
    apps = InngestApps(cluster, "inngest_tsapp.mjs", ["node", "--experimental-websocket"],
                       "tsapp-")
    (apps.workdir / "node_modules").symlink_to(modules)
    # The SDK opens its socket in a worker thread, which does not inherit the command
    # line's flags: Node 20 needs the WebSocket flag in NODE_OPTIONS too.
    apps.env["NODE_OPTIONS"] = "--experimental-websocket"
    return apps
