"""A PostgreSQL server of the loop's own, so it can be restarted (``pg_ctl stop -m immediate``,
a crash as far as the data is concerned) without disturbing anyone else's server.

Built from the installed PostgreSQL binaries in a temporary directory, on a free port; as root
it runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.cluster import free_port


def binaries() -> Path | None:
    """The newest installed PostgreSQL bin directory with initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """``start()``, ``crash_restart()``, ``stop()``; ``url`` is its ``postgres`` database."""

    def __init__(self) -> None:
        bindir = binaries()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
        self.bin = bindir
        # Its own directory under /tmp: the postgres user must reach it, which it cannot
        # inside a root-only test directory.
        self.folder = Path(tempfile.mkdtemp(prefix="tether-chaos-pg-"))
        self.data = self.folder / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "--no-sync", "-E", "UTF8")
        self._run("pg_ctl", "start", "-w", "-D", str(self.data), "-l",
                  str(self.folder / "postgres.log"), "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                  "-c max_connections=200 -c fsync=on -c synchronous_commit=on")

    def crash_restart(self) -> None:
        """Stop without a checkpoint (as a crash leaves the files) and start again."""
        self._run("pg_ctl", "stop", "-w", "-D", str(self.data), "-m", "immediate")
        self.start()

    def stop(self) -> None:
        """Stop it and remove its files."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-w", "-D", str(self.data), "-m", "immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
