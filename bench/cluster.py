"""Real gateway and worker processes on loopback, for the benchmark and end-to-end tests.

Each process is started with ``python -m gateway`` / ``python -m worker`` exactly as a user
would, on free ports, with its log captured to a file that tests and benchmarks can read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(timeout=10)

    def peak_rss_kib(self) -> int:
        """VmHWM of a live process, in KiB (0 once it is gone)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


@dataclass
class Cluster:
    """One gateway and any number of workers, all on 127.0.0.1."""

    workdir: Path
    db: str = ""
    http_port: int = field(default_factory=free_port)
    connect_port: int = field(default_factory=free_port)
    gateway_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    gateway: Process | None = None
    workers: list[Process] = field(default_factory=list)
    _count: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.db:
            self.db = f"sqlite:///{self.workdir / 'tether.db'}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def connect_url(self) -> str:
        return f"ws://127.0.0.1:{self.connect_port}/connect"

    def _spawn(self, name: str, args: list[str], cwd: Path | None = None) -> Process:
        self._count += 1
        log_path = self.workdir / f"{self._count:02d}-{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), str(self.workdir), env.get("PYTHONPATH", "")) if p
        )
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                cwd=cwd or self.workdir, env=env,
            )
        return Process(name, popen, log_path)

    def start_gateway(self, *extra: str, wait: bool = True, _tries: int = 3) -> Process:
        args = ["-m", "gateway", "--host", "127.0.0.1", "--port", str(self.http_port),
                "--connect-port", str(self.connect_port), "--db", self.db,
                *self.gateway_args, *extra]
        if "--signing-key" not in args and "--dev" not in args:
            args.append("--dev")
        first = self.gateway is None and not self.workers
        self.gateway = self._spawn("gateway", args)
        if wait:
            try:
                self.wait_healthy()
            except RuntimeError as exc:
                # free_port() only found ports that were free a moment ago; another process
                # may have taken one since. Before anyone knows the ports, take others.
                taken = "address already in use" in str(exc).lower()  # "[Errno 98] Address..."
                if not (first and _tries > 1 and taken):
                    raise
                self.gateway = None
                self.http_port, self.connect_port = free_port(), free_port()
                return self.start_gateway(*extra, wait=wait, _tries=_tries - 1)
        return self.gateway

    def wait_healthy(self, timeout: float = 20.0) -> dict[str, Any]:
        """Until ``GET /health`` answers (the gateway has started and recovered)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health: dict[str, Any] = self.get("/health")
                return health
            except OSError:
                if self.gateway is not None and not self.gateway.alive():
                    raise RuntimeError(f"gateway exited:\n{self.gateway.log()}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("gateway did not become healthy") from None
                time.sleep(0.05)

    def start_worker(self, *specs: str, args: tuple[str, ...] = (), name: str = "worker"
                     ) -> Process:
        argv = ["-m", "worker", *specs, "--gateway", self.connect_url, *args]
        worker = self._spawn(name, argv)
        self.workers.append(worker)
        return worker

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else (
            body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        status, body = self.request("GET", path, headers=headers)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        return body

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(self.api + path, timeout=30) as resp:
            text: str = resp.read().decode()
            return text

    def send(self, events: Any, key: str = "dev") -> list[str]:
        status, body = self.request("POST", f"/e/{key}", events)
        if status != 200:
            raise RuntimeError(f"POST /e: {status} {body}")
        ids: list[str] = body["ids"]
        return ids

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=5)
        if self.gateway is not None:
            self.gateway.stop(timeout=10)
