"""The frame proxy injects what it says, frame by frame, reproducibly from its seed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidMessage

from bench.chaos.proxy import CLEAN, Faults, Proxy

N = 40


async def echo(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            await ws.send(message)


@pytest.fixture
async def through() -> AsyncIterator[tuple[Proxy, str]]:
    """An echo server behind a proxy (seed 7): the proxy and the URL to dial."""
    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        proxy = Proxy(seed=7)
        try:
            yield proxy, f"ws://127.0.0.1:{proxy.listen(port)}"
        finally:
            proxy.close()


async def exchange(url: str, count: int = N, timeout: float = 0.5) -> list[str]:
    """Send ``count`` numbered messages, then collect echoes until ``timeout`` of quiet."""
    got: list[str] = []
    with contextlib.suppress(ConnectionClosed):  # a reset: what arrived until then counts
        async with connect(url, compression=None) as ws:
            for i in range(count):
                await ws.send(f"m{i}")
            with contextlib.suppress(TimeoutError):
                while True:
                    got.append(str(await asyncio.wait_for(ws.recv(), timeout)))
    return got


async def test_a_clean_proxy_forwards_every_frame_in_order(through: tuple[Proxy, str]) -> None:
    proxy, url = through
    assert await exchange(url) == [f"m{i}" for i in range(N)]
    assert proxy.stats["frames"] >= 2 * N


async def test_drop_loses_frames_and_the_same_seed_loses_the_same_ones(
        through: tuple[Proxy, str]) -> None:
    proxy, url = through
    proxy.set(Faults(drop=0.3))
    first = await exchange(url)
    assert 0 < len(first) < N and proxy.stats["dropped"] > 0
    again = Proxy(seed=7)  # connection 1 again, same seed: the same frames go
    try:
        target = int(url.rsplit(":", 1)[1])
        proxy.set(CLEAN)
        again.set(Faults(drop=0.3))
        assert await exchange(f"ws://127.0.0.1:{again.listen(target)}") == first
    finally:
        again.close()


async def test_duplicate_and_reorder(through: tuple[Proxy, str]) -> None:
    proxy, url = through
    proxy.set(Faults(duplicate=0.3))
    doubled = await exchange(url)
    assert len(doubled) > N and proxy.stats["duplicated"] > 0
    proxy.set(Faults(reorder=0.3))
    shuffled = await exchange(url)
    assert sorted(shuffled) == sorted(f"m{i}" for i in range(N)) != shuffled


async def test_truncate_reset_and_half_open_end_the_connection(
        through: tuple[Proxy, str]) -> None:
    proxy, url = through
    for faults, stat in ((Faults(truncate=0.2), "truncated"), (Faults(reset=0.2), "reset"),
                         (Faults(half_open=0.2, silence=0.5), "half_open")):
        proxy.set(faults)
        assert len(await exchange(url)) < N, stat
        assert proxy.stats[stat] > 0, stat


async def test_flap_refuses_connections_while_down(through: tuple[Proxy, str]) -> None:
    proxy, url = through
    proxy.set(Faults(down=True))
    with pytest.raises((OSError, InvalidMessage)):  # reset during the handshake
        await exchange(url)
    assert proxy.stats["refused"] == 1
    proxy.set(CLEAN)
    assert len(await exchange(url)) == N
