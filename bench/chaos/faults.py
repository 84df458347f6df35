"""Fault loops over real processes: a load of witnessed runs, faults on a seeded schedule,
a final heal, then the accounting of :mod:`bench.chaos.checker`.

The schedule (which process, how long between faults) comes from ``random.Random(seed)`` and
is printed with the figures, so a failing loop can be run again as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos import store
from bench.chaos.checker import FINAL, Report, check
from bench.chaos.driver import Driver
from bench.chaos.pgserver import PrivatePostgres
from bench.chaos.proxy import CLEAN, Faults, Proxy
from bench.cluster import Cluster, Process

APP = "bench.chaos.chaosapp:app"
CLOCK_APP = "bench.chaos.chaosapp:clock"
FINAL_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(FINAL)) + ")"


class Store:
    """The loop's database: a SQLite file in its directory, or a PostgreSQL server of its own
    (so that it can be crashed and restarted)."""

    def __init__(self, backend: str, workdir: Path, disk_mb: int = 0) -> None:
        self.server: PrivatePostgres | None = None
        self.disk: Path | None = None
        if backend == "sqlite":
            folder = workdir
            if disk_mb:
                self.disk = folder = mount_tmpfs(workdir / "disk", disk_mb)
            self.url = f"sqlite:///{folder / 'tether.db'}"
        elif backend == "postgres":
            self.server = PrivatePostgres()
            self.server.start()
            self.url = self.server.url
        else:
            raise ValueError(f"unknown backend {backend!r}: sqlite or postgres")

    def drop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.disk is not None:
            subprocess.run(["umount", "-l", str(self.disk)], capture_output=True, check=False)


def mount_tmpfs(folder: Path, size_mb: int) -> Path:
    """A size-limited tmpfs at ``folder`` (root only); raises OSError saying why not."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                           str(folder)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise OSError(f"cannot mount a {size_mb} MiB tmpfs at {folder} (needs root): "
                      f"{done.stderr.strip()}")
    return folder


def can_mount_tmpfs() -> str | None:
    """None when this process can mount a tmpfs, else why not (a test's skip reason)."""
    with tempfile.TemporaryDirectory(prefix="tether-tmpfs-probe-") as tmp:
        try:
            mount_tmpfs(Path(tmp) / "d", 1)
        except OSError as exc:
            return str(exc)
        subprocess.run(["umount", str(Path(tmp) / "d")], check=False)
    return None


@dataclass
class Loop:
    """Gateways on one store, workers connected to all of them (their own first)."""

    workdir: Path
    backend: str = "sqlite"
    gateways: int = 1
    workers: int = 3
    heartbeat: float = 0.5
    concurrency: int = 20
    disk_mb: int = 0  # the SQLite file on a tmpfs of this size (disk-full faults)
    #: Every process under libfaketime, its clock offset read from ``clock-NAME`` in workdir.
    faketime: bool = False
    apps: tuple[str, ...] = (APP,)
    #: Workers dial the gateways through this proxy, when set.
    proxy: Proxy | None = None
    db: Store | None = None
    cycle: int = 0  # the fault being injected, of ``cycles``
    cycles: int = 0
    clusters: list[Cluster] = field(default_factory=list)
    procs: list[Process] = field(default_factory=list)
    dial: list[str] = field(default_factory=list)  # the URL workers use for each gateway

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db = Store(self.backend, self.workdir, self.disk_mb)
        for i in range(self.gateways):
            cluster = Cluster(self.workdir / f"gw{i}", db=self.db.url, env={
                "TETHER_CHAOS_DIR": str(self.workdir)}, gateway_args=[
                "--heartbeat-interval", str(self.heartbeat), "--retry-base", "0.05",
                "--log-format", "json"])
            self.clusters.append(cluster)
            self._clock(cluster, f"gateway{i}")
            cluster.start_gateway()
        self.dial = [c.connect_url for c in self.clusters]
        if self.proxy is not None:
            self.dial = [f"ws://127.0.0.1:{self.proxy.listen(c.connect_port)}/connect"
                         for c in self.clusters]
        for slot in range(self.workers):
            self.procs.append(self._worker(slot))
        self.wait(lambda: sum(len(c.get("/v1/workers")["data"]) for c in self.live()) >=
                  self.workers * (len(self.live()) if self.backend == "postgres" else 1),
                  "every worker connected", 30)

    @property
    def url(self) -> str:
        assert self.db is not None
        return self.db.url

    def live(self) -> list[Cluster]:
        return [c for c in self.clusters if c.gateway is not None and c.gateway.alive()]

    def apis(self) -> list[str]:
        return [c.api for c in self.live()] or [self.clusters[0].api]

    def _worker(self, slot: int) -> Process:
        home = slot % self.gateways
        order = self.dial[home:] + self.dial[:home]
        args = [a for u in order[1:] for a in ("--gateway", u)]
        cluster = self.clusters[home]
        self._clock(cluster, f"worker{slot}")
        proc = cluster._spawn(f"worker{slot}", [
            "-m", "worker", *self.apps, "--gateway", order[0], *args, "--concurrency",
            str(self.concurrency), "--log-format", "json"])
        cluster.workers.append(proc)
        return proc

    def _clock(self, cluster: Cluster, name: str) -> None:
        """The next process spawned for ``cluster`` reads its clock offset from its own file."""
        if not self.faketime:
            return
        control = self.workdir / f"clock-{name}"
        if not control.exists():
            control.write_text("+0\n")
        cluster.env.update(FAKETIME_ENV)
        cluster.env["LD_PRELOAD"] = str(libfaketime())
        cluster.env["FAKETIME_TIMESTAMP_FILE"] = str(control)

    def set_clock(self, name: str, offset: int) -> None:
        """``name``'s wall clock (gateway0, worker1, ...) now reads real time + ``offset`` s."""
        (self.workdir / f"clock-{name}").write_text(f"{offset:+d}\n")

    def restart_worker(self, slot: int) -> None:
        self.procs[slot] = self._worker(slot)

    def wait(self, predicate: Callable[[], object], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s")
            time.sleep(0.05)

    def ledger_lines(self) -> int:
        return sum(p.read_bytes().count(b"\n")
                   for p in (self.workdir / "ledger").glob("*.jsonl"))

    def wait_progress(self, lines: int, timeout: float) -> None:
        """Until ``lines`` more ledger lines exist: work is flowing (before the next fault)."""
        target = self.ledger_lines() + lines
        self.wait(lambda: self.ledger_lines() >= target, "steps running between faults",
                  timeout)

    def unfinished(self) -> int:
        return int(store.rows(self.url, f"SELECT count(*) FROM runs WHERE status NOT IN "
                                        f"{FINAL_SQL}")[0][0])

    def stop(self) -> None:
        """kill -9 everything: the accounting is done, and the store must survive it."""
        if self.proxy is not None:
            self.proxy.close()
        for cluster in self.clusters:
            for proc in [*cluster.workers, *([cluster.gateway] if cluster.gateway else [])]:
                with contextlib.suppress(Exception):  # a process gone hides no figure
                    proc.kill()

    def drop(self) -> None:
        if self.db is not None:
            self.db.drop()


# --- faults: one call injects one fault and heals it -----------------------------------------

#: Injects one fault, heals it, and says what it did (for the printed schedule).
Fault = Callable[[Loop, random.Random], str]


def kill_worker(loop: Loop, rng: random.Random) -> str:
    """kill -9 a worker (steps die mid-body), and start another in its place."""
    slot = rng.randrange(len(loop.procs))
    pid = loop.procs[slot].pid
    loop.procs[slot].kill()
    loop.restart_worker(slot)
    return f"kill -9 worker{slot} ({pid})"


def stop_worker(loop: Loop, rng: random.Random) -> str:
    """SIGSTOP a worker past its lease (3 heartbeats), then SIGCONT: a zombie lease holder
    whose late results must be refused."""
    slot = rng.randrange(len(loop.procs))
    proc, frozen = loop.procs[slot], loop.heartbeat * rng.uniform(3.5, 5)
    proc.signal(signal.SIGSTOP)
    try:
        time.sleep(frozen)
    finally:
        proc.signal(signal.SIGCONT)
    return f"SIGSTOP worker{slot} ({proc.pid}) for {frozen:.1f} s"


def kill_gateway(loop: Loop, rng: random.Random) -> str:
    """kill -9 a gateway and start it again on the same store and ports."""
    index = rng.randrange(len(loop.clusters))
    cluster = loop.clusters[index]
    assert cluster.gateway is not None
    cluster.gateway.kill()
    down = rng.uniform(0, 0.5) if rng.random() < 0.5 else 0.0
    time.sleep(down)
    cluster.start_gateway()
    return f"kill -9 gateway{index}, down {down:.2f} s"


def terminate_backends(loop: Loop, rng: random.Random) -> str:
    """pg_terminate_backend on every connection of the gateways to their database."""
    import asyncpg

    async def run() -> int:
        conn = await asyncpg.connect(loop.url, timeout=10)
        try:
            return len(await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        finally:
            await conn.close()

    return f"pg_terminate_backend x{asyncio.run(run())}"


def restart_postgres(loop: Loop, rng: random.Random) -> str:
    """PostgreSQL stopped as by a crash (``-m immediate``) and started again."""
    assert loop.db is not None and loop.db.server is not None
    loop.db.server.crash_restart()
    return "PostgreSQL crash-restart"


def postgres_mix(loop: Loop, rng: random.Random) -> str:
    """PostgreSQL: a gateway kill -9 or its connections terminated, at random, and one crash
    restart of the server in the middle of the loop."""
    if loop.cycle == loop.cycles // 2:
        return restart_postgres(loop, rng)
    return (kill_gateway if rng.random() < 0.6 else terminate_backends)(loop, rng)


def network(faults: Faults, period: float = 1.5) -> Fault:
    """``faults`` on the wire between workers and gateways for about ``period`` seconds."""

    def inject(loop: Loop, rng: random.Random) -> str:
        assert loop.proxy is not None, "a network fault needs the loop's proxy"
        before = dict(loop.proxy.stats)
        spell = rng.uniform(period / 2, period)
        loop.proxy.set(faults)
        try:
            time.sleep(spell)
        finally:
            loop.proxy.set(CLEAN)
        done = {k: v - before.get(k, 0) for k, v in loop.proxy.stats.items()
                if k != "frames" and v - before.get(k, 0)}
        return f"{spell:.1f} s of {faults}: {done}"

    inject.__doc__ = f"{faults} for about {period:g} s"
    return inject


#: The wire faults a network loop goes through, one per cycle, in this order.
NETWORK: list[tuple[str, Faults]] = [
    ("delay", Faults(delay=0.2)),
    ("duplicate", Faults(duplicate=0.1)),
    ("reorder", Faults(reorder=0.1)),
    ("drop up", Faults(drop=0.05, direction="up")),
    ("drop down", Faults(drop=0.05, direction="down")),
    ("truncate/reset", Faults(truncate=0.03, reset=0.03)),
    ("half-open", Faults(half_open=0.05, silence=2.0)),
    ("flap", Faults(down=True)),
]


def network_mix(loop: Loop, rng: random.Random) -> str:
    """Each of :data:`NETWORK` in turn, for about a second each."""
    name, faults = NETWORK[loop.cycle % len(NETWORK)]
    return f"{name}: " + network(faults, period=1.5)(loop, rng)


def disk_full(loop: Loop, rng: random.Random) -> str:
    """Fill the store's tmpfs to the last byte for a spell, then free the space."""
    assert loop.db is not None and loop.db.disk is not None, "needs Plan(disk_mb=...)"
    filler = loop.db.disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 16, 512):  # big chunks, then the last few blocks
            with contextlib.suppress(OSError):  # ENOSPC: full
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    spell = rng.uniform(1.0, 2.0)
    time.sleep(spell)
    size = filler.stat().st_size
    filler.unlink()
    return f"disk full ({size >> 20} MiB of filler) for {spell:.1f} s"


def outside_lock(loop: Loop, rng: random.Random) -> str:
    """Another process holds the SQLite write lock for a spell (a backup, a curious sqlite3
    shell): the gateway meets ``database is locked`` and must neither lose nor fail a run."""
    assert loop.url.startswith("sqlite:"), "an outside lock is a SQLite fault"
    # In turn above the gateway's 5 s busy_timeout (its commits fail) and below (they wait).
    spell = rng.uniform(5.5, 7.0) if loop.cycle % 2 == 0 else rng.uniform(1.0, 4.0)
    script = ("import sqlite3, sys, time\n"
              "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "c.execute('BEGIN IMMEDIATE')\n"
              "print('locked', flush=True)\n"
              "time.sleep(float(sys.argv[2]))\n"
              "c.execute('ROLLBACK')\n")
    holder = subprocess.Popen([sys.executable, "-c", script, loop.url.removeprefix(
        "sqlite:///"), str(spell)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.wait(timeout=spell + 30)
    return f"write lock held from outside for {spell:.1f} s"


#: libfaketime as a real clock jump looks: the wall clock moves, CLOCK_MONOTONIC does not;
#: the offset file is read again at most every second.
FAKETIME_ENV = {"FAKETIME_DONT_FAKE_MONOTONIC": "1", "DONT_FAKE_MONOTONIC": "1",
                "FAKETIME_CACHE_DURATION": "1"}


def libfaketime() -> Path | None:
    """The multithreaded libfaketime (Debian's ``faketime`` package), or None."""
    for folder in ("/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime",
                   "/usr/lib/faketime", "/usr/local/lib/faketime"):
        path = Path(folder) / "libfaketimeMT.so.1"
        if path.exists():
            return path
    return None


#: The clock loop's jumps, one set per cycle: (process, its offset from real time, seconds).
JUMPS: list[list[tuple[str, int]]] = [
    # The gateway's clock an hour ahead, a worker's an hour behind.
    [("gateway0", 3600), ("worker0", -3600)],
    # The gateway's 5 s back (cron seconds come again, sleeps wait), the worker's 1 h forward.
    [("gateway0", 3595), ("worker0", 0)],
]


def clock_jump(loop: Loop, rng: random.Random) -> str:
    """Jump wall clocks (:data:`JUMPS`, in turn), and let the processes run a while."""
    jumps = JUMPS[loop.cycle % len(JUMPS)]
    for name, offset in jumps:
        loop.set_clock(name, offset)
    time.sleep(1.0 + rng.uniform(1.0, 2.0))  # the offset is read within a second
    return ", ".join(f"{name} clock at real {offset:+d} s" for name, offset in jumps)


# --- the loop --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """One loop: its load, its fault and how many times, and its bounds."""

    name: str
    fault: Fault
    cycles: int
    backend: str = "sqlite"
    gateways: int = 1
    workers: int = 3
    events: int = 60
    rate: float = 40.0
    steps: int = 3
    hold: float = 0.05
    effects_every: int = 5
    progress: int = 6  # ledger lines between faults
    settle: float = 60.0  # the heal window: every run final within it, or it is stuck
    proxied: bool = False  # workers dial through a frame proxy (network faults)
    disk_mb: int = 0  # SQLite on a tmpfs this big (disk-full faults)
    pad: int = 0  # bytes of padding in each event (to fill a disk)
    nap: float = 0.0  # a durable sleep of this long in each run, between s0 and s1
    faketime: bool = False  # every process under libfaketime (clock faults)
    cron: bool = False  # workers also serve a function ticking every second
    heartbeat: float = 0.5


def run(plan: Plan, workdir: Path, seed: int, **extra: Any) -> Report:
    """Run ``plan`` in ``workdir`` with the schedule of ``seed``; the figures, checked."""
    rng = random.Random(seed)
    report = Report(f"{plan.name} (seed {seed})")
    began = time.monotonic()
    loop = Loop(workdir, backend=plan.backend, gateways=plan.gateways, workers=plan.workers,
                proxy=Proxy(seed) if plan.proxied else None, disk_mb=plan.disk_mb,
                heartbeat=plan.heartbeat, faketime=plan.faketime,
                apps=(APP, CLOCK_APP) if plan.cron else (APP,), **extra)
    try:
        loop.start()
        driver = Driver(loop.apis, workdir, plan.events, plan.rate, lambda n: {
            "name": "chaos/go", "data": {"steps": plan.steps, "hold": plan.hold,
                                         "effects": n % plan.effects_every == 0,
                                         "pad": "x" * plan.pad, "nap": plan.nap}},
            seed=seed)
        driver.start()
        loop.cycles = plan.cycles
        report.start_s = round(time.monotonic() - began, 1)
        for loop.cycle in range(plan.cycles):
            loop.wait_progress(plan.progress, 60)
            report.schedule.append(plan.fault(loop, rng))
            report.faults += 1
        healed = time.monotonic()
        driver.stop()
        driver.join(plan.events / plan.rate + 120)
        report.unaccepted = driver.heal()
        deadline = healed + plan.settle
        while loop.unfinished() and time.monotonic() < deadline:
            time.sleep(0.1)
        report.drain_s = round(time.monotonic() - healed, 1)
        snap = store.snapshot(loop.url)
        check(report, driver, workdir / "ledger", snap)
        report.stuck = loop.unfinished()
    finally:
        loop.stop()
        try:
            if loop.db is not None:
                report.integrity = store.integrity_check(loop.url)
        finally:
            loop.drop()
    report.seconds = round(time.monotonic() - began, 1)
    return report
