"""Shared fixtures: fake clock, temporary stores, in-process gateways, real process clusters."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.cluster import Cluster
from gateway.app import open_store
from gateway.clock import FakeClock
from gateway.store.base import Store
from tests.helpers import postgres as pg


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
