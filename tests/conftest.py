"""Shared fixtures: fake clock, temporary stores, in-process gateways, real process clusters.

The suite runs under pytest-xdist (``python3 dev.py test`` passes ``-n``; ``--dist
loadgroup`` is in the pytest options). The hooks here keep that safe and cheap:

- every test of a module whose tests share a module-scoped fixture (a gateway process, a
  browser) goes to one xdist worker, so the fixture starts once, not once per worker;
- the tests using a ``fleet`` (several gateways on one PostgreSQL database, eight
  connections each) go to one worker, so fleets never add up to the server's connection
  limit;
- a test marked ``serial`` has the machine to itself (no other test of the run executes
  meanwhile): a readers-writer lock on a file shared by the run's workers.
"""

from __future__ import annotations

import fcntl
import json
import random
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from bench.cluster import Cluster
from gateway.app import open_store
from gateway.clock import FakeClock
from gateway.store.base import Store
from tests.helpers import postgres as pg

# Properties are about what is drawn, not how fast: on a loaded machine (xdist workers on two
# cores) drawing one example can take seconds, which Hypothesis would report as a failure.
settings.register_profile("tether", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tether")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "serial: needs the machine to itself (load, timing): while it runs, no "
                   "other test of the run does, even under pytest-xdist")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Keep the tests sharing a module-scoped fixture, and those using a fleet, on one xdist
    worker each (a test's own ``xdist_group`` mark wins)."""
    if item.get_closest_marker("xdist_group") is not None:
        return
    if "fleet" in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.xdist_group("postgres-fleet"))
        return
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    if any(d and d[-1].scope == "module" for d in defs):
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


GROUPS_FILE = "xdist-groups.json"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker, tell the controller each test's group (in a file of the run).

    xdist 3.8 passes groups by renaming ``item._nodeid``, which pytest 9 no longer reads, so
    the controller's scheduler (below) reads them from this file instead.
    """
    if not hasattr(config, "workerinput"):
        return
    groups = {}
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark is not None:
            groups[item.nodeid] = str(mark.args[0] if mark.args else mark.kwargs["name"])
    target = _run_lock_dir(config) / GROUPS_FILE
    partial = target.with_suffix(f".{config.workerinput['workerid']}")  # type: ignore[attr-defined]
    partial.write_text(json.dumps(groups))
    partial.replace(target)  # every worker collects the same tests: the same groups


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` with the groups the workers wrote (see above)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]

    class FileGroups(LoadGroupScheduling):  # type: ignore[misc]
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                path = base / GROUPS_FILE
                self.groups = json.loads(path.read_text()) if path.exists() else {}
            return self.groups.get(nodeid, nodeid)

    return FileGroups(config, log)


def _run_lock_dir(config: pytest.Config) -> Path:
    """A folder every xdist worker of this run shares (and only they)."""
    factory: pytest.TempPathFactory = config._tmp_path_factory  # type: ignore[attr-defined]
    base = factory.getbasetemp()
    return base.parent if hasattr(config, "workerinput") else base


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, Any, Any]:
    """Shared lock around every test, exclusive around a ``serial`` one.

    A turnstile makes it fair to the writer: a serial test waiting for the running ones to
    end stops new ones from starting meanwhile.
    """
    folder = _run_lock_dir(item.config)
    serial = item.get_closest_marker("serial") is not None
    with (folder / "tests.turnstile").open("a") as turnstile, \
            (folder / "tests.lock").open("a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
        finally:
            if not serial:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            return (yield)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if serial:
                fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One throwaway PostgreSQL database for the session (tables emptied between tests)."""
    url = pg.create_database_sync()
    yield url
    pg.drop_database_sync(url)


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ``--db`` value for each backend; the PostgreSQL database starts empty."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tether.db'}"
    url: str = request.getfixturevalue("pg_url")
    await pg.truncate(url)
    return url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """A fresh, migrated store, once per backend."""
    s = open_store(db_url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Real ``python -m gateway`` / ``python -m worker`` processes on loopback."""
    c = Cluster(tmp_path / "cluster", gateway_args=["--retry-base", "0.05",
                                                    "--log-format", "json"])
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def gateway_factory(tmp_path: Path, db_url: str) -> AsyncIterator[object]:
    """Start in-process gateways on free loopback ports: ``await gateway_factory(**settings)``."""
    from gateway.app import Gateway
    from gateway.config import Settings

    started: list[Gateway] = []

    async def make(clock: object = None, **overrides: object) -> Gateway:
        values: dict[str, object] = {
            "host": "127.0.0.1", "port": 0, "connect_port": 0, "dev": True,
            "db": db_url, "retry_base": 0.01, "go_away_grace": 0.5,
        }
        values.update(overrides)
        gw = Gateway(Settings(**values), clock=clock)  # type: ignore[arg-type]
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in reversed(started):
        await gw.stop()


@pytest.fixture
async def harness(gateway_factory):
    """An in-process gateway (dev mode, fast retries) with helpers to start workers."""
    from tests.helpers.inproc import Harness

    h = Harness(await gateway_factory())
    yield h
    await h.close()
