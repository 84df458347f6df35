"""Shared fixtures: fake clock, temporary stores, in-process gateways, real process clusters."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.cluster import Cluster
from gateway.clock import FakeClock
from gateway.store.sqlite import SQLiteStore


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A fresh, migrated store (SQLite now; parametrized over backends as they arrive)."""
    s = SQLiteStore(tmp_path / "tether.db")
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
async def gateway_factory(tmp_path: Path) -> AsyncIterator[object]:
    """Start in-process gateways on free loopback ports: ``await gateway_factory(**settings)``."""
    from gateway.app import Gateway
    from gateway.config import Settings

    started: list[Gateway] = []

    async def make(clock: object = None, **overrides: object) -> Gateway:
        values: dict[str, object] = {
            "host": "127.0.0.1", "port": 0, "connect_port": 0, "dev": True,
            "db": f"sqlite:///{tmp_path / f'gw{len(started)}.db'}", "retry_base": 0.01,
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
