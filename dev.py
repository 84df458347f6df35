#!/usr/bin/env python3
"""Set up and run Tether from a fresh clone with nothing but Python >= 3.11.

    python3 dev.py gateway [GATEWAY OPTIONS]   install, then run the gateway (--dev, SQLite)
    python3 dev.py worker MODULE:APP [...]     install, then run a worker
    python3 dev.py test [PYTEST OPTIONS]       install with test tools (and PostgreSQL if no
                                               server runs on 127.0.0.1:5432, and chromium for
                                               the dashboard's browser tests), run every test
                                               in parallel (-n WORKERS, default two per core,
                                               or TETHER_TEST_WORKERS; -n 0: one process)
    python3 dev.py bench [BENCH OPTIONS]       install, then run the benchmark

Everything goes into ./.venv; re-running skips the install when pyproject.toml is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"


def ensure_env(extras: str = "") -> None:
    """Create .venv and install the project (editable) when pyproject.toml changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py must explain this on old Pythons
        sys.exit(f"Tether needs Python >= 3.11; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    marker = VENV / f".installed{('-' + extras) if extras else ''}"
    if marker.exists() and marker.read_text() == digest:
        return
    print(f"dev.py: installing tether{f'[{extras}]' if extras else ''} into .venv", flush=True)
    target = f".[{extras}]" if extras else "."
    _pip("install", "--upgrade", "pip")
    _pip("install", "-e", target)
    marker.write_text(digest)


def _pip(*args: str) -> None:
    """Run pip quietly: its output (setuptools' notes on editable installs included) is shown
    only when it fails."""
    done = subprocess.run([str(PYTHON), "-m", "pip", *args, "-q"], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        sys.exit(f"dev.py: pip {' '.join(args)} failed (exit {done.returncode}); see above")


PG_CANDIDATES = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://postgres:postgres@127.0.0.1:5432/postgres",
)


def _pg_reachable(url: str) -> bool:
    probe = ("import asyncio, asyncpg, sys\n"
             "async def main():\n"
             "    c = await asyncpg.connect(sys.argv[1], timeout=3)\n"
             "    await c.close()\n"
             "asyncio.run(main())\n")
    return subprocess.run([str(PYTHON), "-c", probe, url], capture_output=True).returncode == 0


def ensure_postgres() -> str:
    """A PostgreSQL server the tests can use: the one on 127.0.0.1:5432, else install one.

    Returns its URL (``TETHER_TEST_PG_URL`` wins when set). The tests create and drop their
    own throwaway databases on it.
    """
    if os.environ.get("TETHER_TEST_PG_URL"):
        return os.environ["TETHER_TEST_PG_URL"]
    for url in PG_CANDIDATES:
        if _pg_reachable(url):
            return url
    print("dev.py: no PostgreSQL on 127.0.0.1:5432; starting one", flush=True)
    if shutil.which("pg_ctlcluster") is None:
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            sys.exit("dev.py: PostgreSQL is needed for the tests: install it (Debian: apt-get "
                     "install postgresql) or set TETHER_TEST_PG_URL")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)
    for version in sorted(os.listdir("/etc/postgresql"), reverse=True):
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                       check=False)
        break
    for _ in range(60):
        if shutil.which("runuser"):
            subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-q", "-c",
                            "ALTER USER postgres PASSWORD 'postgres'"], capture_output=True)
        for url in PG_CANDIDATES:
            if _pg_reachable(url):
                return url
        time.sleep(1)
    sys.exit("dev.py: PostgreSQL did not come up on 127.0.0.1:5432")


def _apt_install(package: str, purpose: str, without: str) -> None:
    """Install a Debian ``package`` for ``purpose``; without root or apt-get, say how to get
    it and what skips meanwhile (``without``)."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        print(f"dev.py: {package} is not installed, so {without}; install it "
              f"(Debian: apt-get install {package})", flush=True)
        return
    print(f"dev.py: installing {package} for {purpose}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env)


def ensure_chromium() -> None:
    """Debian's chromium for the dashboard's browser tests (Playwright drives it; no browser
    download)."""
    if not shutil.which("chromium"):
        _apt_install("chromium", "the dashboard's browser tests",
                     "the dashboard's browser tests skip")


def test_workers() -> int:
    """pytest-xdist workers for ``dev.py test``: two per core, at most six. Most tests wait on
    real gateway and worker processes, so more workers than cores pays (measured on two)."""
    return min(6, 2 * (os.cpu_count() or 1))


def pytest_args(rest: list[str]) -> list[str]:
    """``rest`` with ``-n`` added, unless the caller chose the workers."""
    if any(a.startswith(("-n", "--numprocesses")) for a in rest):
        return rest
    workers = os.environ.get("TETHER_TEST_WORKERS") or str(test_workers())
    return ["-n", workers, *rest]


def ensure_faketime() -> None:
    """Debian's faketime (libfaketime) for the reliability suite's wall-clock jumps."""
    if not any(Path(d, "libfaketimeMT.so.1").exists() for d in (
            "/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime",
            "/usr/lib/faketime")):
        _apt_install("faketime", "the clock-jump test", "the clock-jump test skips")


def ensure_strace() -> None:
    """strace, for the reliability test that every acknowledgement follows its fsync."""
    if not shutil.which("strace"):
        _apt_install("strace", "the fsync-before-acknowledgement test",
                     "the fsync-before-acknowledgement test skips")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "gateway":
        ensure_env()
        args = rest if any(a in rest for a in ("--signing-key", "--dev")) else ["--dev", *rest]
        os.execv(PYTHON, [str(PYTHON), "-m", "gateway", *args])
    if command == "worker":
        ensure_env()
        os.execv(PYTHON, [str(PYTHON), "-m", "worker", *rest])
    if command == "test":
        ensure_env("test")
        env = {**os.environ, "TETHER_TEST_PG_URL": ensure_postgres()}
        ensure_chromium()
        ensure_faketime()
        ensure_strace()
        return subprocess.call([str(PYTHON), "-m", "pytest", *pytest_args(rest)], cwd=ROOT,
                               env=env)
    if command == "bench":
        ensure_env()
        return subprocess.call([str(PYTHON), "-m", "bench", *rest], cwd=ROOT)
    print(f"dev.py: unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
