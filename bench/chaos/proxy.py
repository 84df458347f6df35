"""A seeded, frame-aware TCP proxy between workers and gateways (``tc netem`` is not here).

It forwards the WebSocket handshake as bytes, then reads each direction frame by frame (RFC
6455 framing; the sockets use no compression, so every frame stands alone) and applies the
current :class:`Faults` to each:

* ``drop``, ``duplicate``: a data frame is not forwarded, or forwarded twice (an intermediary
  that loses or repeats messages; TCP itself never would);
* ``reorder``: a data frame is held back and forwarded after the next one;
* ``delay``: each frame waits up to ``delay`` seconds (the direction stays in order);
* ``truncate``: part of a frame is sent, then both sockets are reset;
* ``reset``: both sockets are reset between two frames;
* ``half_open``: the connection goes silent both ways (no FIN, no RST) for ``silence``
  seconds, then is reset: only heartbeats can tell;
* ``flap``: every connection is reset, and new ones are refused, while ``down`` is set.

Per-frame faults apply to both directions, or only ``up`` (worker to gateway) or ``down``.

The random choices come from ``random.Random(f"{seed}/{connection}/{direction}")``, so a
connection meets the same faults, frame by frame, when the loop is run again with its seed.
``stats`` counts what was injected, so a test can show the proxy does what it says.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

CONTROL = 0x8  # opcodes 0x8..0xF: close, ping, pong


@dataclass(frozen=True)
class Faults:
    """Per-frame probabilities (0..1) and durations (seconds); all zero is a clean wire."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    truncate: float = 0.0
    reset: float = 0.0
    half_open: float = 0.0
    silence: float = 3.0
    down: bool = False
    #: Which way the per-frame faults apply: "up" (worker to gateway), "down" or "both".
    direction: str = "both"


CLEAN = Faults()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One whole frame as it was on the wire: (opcode, bytes)."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    extra = b""
    if length == 126:
        extra = await reader.readexactly(2)
        length = int.from_bytes(extra, "big")
    elif length == 127:
        extra = await reader.readexactly(8)
        length = int.from_bytes(extra, "big")
    mask = await reader.readexactly(4) if head[1] & 0x80 else b""
    payload = await reader.readexactly(length)
    return head[0] & 0x0F, head + extra + mask + payload


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """The HTTP upgrade request or response, up to its blank line."""
    return await reader.readuntil(b"\r\n\r\n")


class _Reset(Exception):
    """This connection is to be reset (truncate, reset, the end of a half-open spell)."""


class Proxy:
    """Listens on one free port per target; runs its own event loop on a thread."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.faults = CLEAN
        self.stats: Counter[str] = Counter()
        self._connections = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy",
                                        daemon=True)
        self._thread.start()
        self._servers: list[asyncio.Server] = []

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def listen(self, target_port: int) -> int:
        """Proxy ``127.0.0.1:target_port``; returns the port to dial instead."""

        async def start() -> int:
            server = await asyncio.start_server(
                lambda r, w: self._serve(r, w, target_port), "127.0.0.1", 0)
            self._servers.append(server)
            return int(server.sockets[0].getsockname()[1])

        port: int = self._call(start())
        return port

    def set(self, faults: Faults) -> None:
        """From now on, ``faults`` (``CLEAN`` heals); ``down`` resets every connection."""
        self.faults = faults
        if faults.down:
            self._loop.call_soon_threadsafe(self._reset_all)

    def _reset_all(self) -> None:
        for writer in list(self._open):
            self.stats["flapped"] += 1
            _abort(writer)

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            self._reset_all()

        with contextlib.suppress(Exception):
            self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter,
                     target_port: int) -> None:
        self._connections += 1
        number = self._connections
        if self.faults.down:
            self.stats["refused"] += 1
            _abort(cwriter)
            return
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            _abort(cwriter)
            return
        self._open |= {cwriter, swriter}
        self.stats["connections"] += 1
        try:
            swriter.write(await read_head(creader))
            cwriter.write(await read_head(sreader))
            silent = asyncio.Event()  # a half-open spell: neither direction forwards
            pumps = [asyncio.ensure_future(self._pump(creader, swriter, number, "up",
                                                      cwriter, silent)),
                     asyncio.ensure_future(self._pump(sreader, cwriter, number, "down",
                                                      swriter, silent))]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            for writer in (cwriter, swriter):
                self._open.discard(writer)
                _abort(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    number: int, direction: str, other: asyncio.StreamWriter,
                    silent: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}/{number}/{direction}")
        held: bytes | None = None
        try:
            while True:
                opcode, frame = await read_frame(reader)
                f = self.faults
                if f.direction not in ("both", direction):
                    f = CLEAN
                self.stats["frames"] += 1
                data = opcode < CONTROL
                # One draw per fault per frame, always: the sequence depends only on the seed.
                draws = [rng.random() for _ in range(7)]
                if silent.is_set():
                    continue  # read and swallowed: the peer hears nothing, not even a FIN
                if f.delay:
                    await asyncio.sleep(draws[0] * f.delay)
                    self.stats["delayed"] += 1
                if draws[1] < f.reset:
                    self.stats["reset"] += 1
                    raise _Reset
                if draws[2] < f.truncate:
                    writer.write(frame[: max(1, int(len(frame) * draws[0]))])
                    await writer.drain()
                    self.stats["truncated"] += 1
                    raise _Reset
                if draws[3] < f.half_open:
                    self.stats["half_open"] += 1
                    silent.set()
                    await asyncio.sleep(f.silence)
                    raise _Reset
                if data and draws[4] < f.drop:
                    self.stats["dropped"] += 1
                    continue
                if data and held is None and draws[5] < f.reorder:
                    held = frame
                    self.stats["reordered"] += 1
                    continue
                writer.write(frame)
                if data and draws[6] < f.duplicate:
                    writer.write(frame)
                    self.stats["duplicated"] += 1
                if held is not None:
                    writer.write(held)
                    held = None
                await writer.drain()
        except _Reset:
            _abort(writer)
            _abort(other)
        except (OSError, asyncio.IncompleteReadError):
            pass


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (no FIN): the peer sees a reset, as after a crash or a middlebox drop."""
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.abort()
