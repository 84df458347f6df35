#!/usr/bin/env python3
"""Set up and run Tether from a fresh clone with nothing but Python >= 3.11.

    python3 dev.py gateway [GATEWAY OPTIONS]   install, then run the gateway (--dev, SQLite)
    python3 dev.py worker MODULE:APP [...]     install, then run a worker
    python3 dev.py test [PYTEST OPTIONS]       install with test tools, then run every test
    python3 dev.py bench [BENCH OPTIONS]       install, then run the benchmark

Everything goes into ./.venv; re-running skips the install when pyproject.toml is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
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
    subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "-q", "-e", target,
         "--config-settings", "editable_mode=compat"],
        check=True, cwd=ROOT,
    )
    marker.write_text(digest)


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
        return subprocess.call([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT)
    if command == "bench":
        ensure_env()
        return subprocess.call([str(PYTHON), "-m", "bench", *rest], cwd=ROOT)
    print(f"dev.py: unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
