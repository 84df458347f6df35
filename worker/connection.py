"""The worker's socket to a gateway: handshake, heartbeats, reconnect forever, in order.

Rule 1: the worker never gives up. Whatever happens to the socket (refused, closed, deaf),
it reconnects with capped, jittered backoff, moving to the next ``--gateway`` URL each time.

Rule 2: liveness is proven both ways on this socket. The worker sends a heartbeat every
interval and expects an answer; a gateway that answers nothing for ~2.5 intervals is treated
as gone (the "looks healthy but is deaf" bug class).

Rule 3: checkpoints survive the socket. Unacknowledged ones are renumbered and sent again,
first, on the next socket; the gateway treats them idempotently and refuses stale ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from protocol import messages as m
from protocol.auth import answer
from protocol.codec import DEFAULT_MAX_FRAME, decode, encode, frames
from protocol.errors import RemoteProtocolError, TetherError
from protocol.messages import PROTOCOL_VERSION
from protocol.session import Role, Session
from worker.wire import Ack, Grant, decode_from_gateway

log = structlog.get_logger("tether.worker")

#: Largest frame the worker accepts (a lease carries up to 32 MiB of run state).
MAX_FRAME_IN = 64 * 1024 * 1024
#: A frame holds at most this many messages, and at most this many bytes, or fewer when the
#: gateway reads less (``Ready.max_frame_size``); one message alone may exceed FRAME_BYTES up
#: to the gateway's limit (the runner never emits a checkpoint over it).
FRAME_MESSAGES = 512
FRAME_BYTES = 1024 * 1024

#: Errors after which reconnecting cannot help: the worker's code must change.
FATAL_CODES = frozenset({"bad_expression", "invalid_input"})


class GatewayRefused(TetherError):
    """The gateway closed the handshake with an error (wrong key, say); try again later."""

    code = "gateway_refused"


class FatalGatewayError(GatewayRefused):
    """The gateway refused this worker's apps for a reason a reconnect cannot fix."""

    code = "fatal"


def backoff(attempt: int, rng: random.Random, *, cap: float = 5.0) -> float:
    """Reconnect delay: 0.1 s doubling to ``cap``, with jitter so workers do not stampede."""
    delay: float = min(cap, 0.1 * 2.0 ** min(attempt, 10))
    return delay * (0.5 + rng.random() / 2)


class Outbox:
    """Checkpoints waiting for acknowledgement, and messages waiting for the socket."""

    def __init__(self) -> None:
        self.seq = 0
        self._acked = 0  # every checkpoint numbered up to this one is acknowledged
        self.unacked: dict[int, m.Checkpoint] = {}
        self.queue: list[m.Message] = []
        self.ready = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def emit(self, checkpoint: m.Checkpoint) -> None:
        """Queue ``checkpoint``, numbered by :meth:`next_seq` just before (so in seq order)."""
        self.unacked[checkpoint.seq] = checkpoint
        self.drained.clear()
        self.queue.append(checkpoint)
        self.ready.set()

    def send(self, message: m.Message) -> None:
        self.queue.append(message)
        self.ready.set()

    def ack(self, upto: int) -> None:
        # Checkpoints are numbered 1, 2, 3... as they are emitted (a number whose message
        # could not be built is skipped), so the acknowledged ones are those numbered after
        # the last ack up to ``upto``: popped by number. Iterating the dict instead would
        # pass, on every ack, each entry deleted since the dict last grew (thousands).
        last = min(upto, self.seq)
        unacked = self.unacked
        for seq in range(self._acked + 1, last + 1):
            unacked.pop(seq, None)
        if last > self._acked:
            self._acked = last
        if not unacked:
            self.drained.set()

    def renumber(self) -> None:
        """A new socket: drop what was queued for the old one, resend unacked from seq 1."""
        old = list(self.unacked.values())
        self.queue = []
        self.unacked = {}
        self.seq = self._acked = 0
        for checkpoint in old:
            self.emit(checkpoint.model_copy(update={"seq": self.next_seq()}))
        if not old:
            self.drained.set()

    def take(self) -> list[m.Message]:
        batch, self.queue = self.queue, []
        self.ready.clear()
        return batch


class GatewayLink:
    """Keeps one socket to one of ``urls`` open for as long as the worker runs."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        hello: Callable[[], m.Hello],
        signing_key: str | None,
        on_message: Callable[[m.Message | Grant | Ack], None],
        on_ready: Callable[[m.Ready], None],
        on_disconnect: Callable[[str], None],
        outbox: Outbox,
        in_flight: Callable[[], int],
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = list(urls)
        self.hello = hello
        self.signing_key = signing_key
        self.on_message = on_message
        self.on_ready = on_ready
        self.on_disconnect = on_disconnect
        self.outbox = outbox
        self.in_flight = in_flight
        self.rng = rng or random.Random()
        self.monotonic = monotonic  # injected: liveness decisions are testable without sleeping
        self.session: Session | None = None
        self.ws: ClientConnection | None = None
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._last_heard = 0.0
        self._last_tick = 0.0  # when the heartbeat task last ran: a frozen process stops it
        self._deaf_after: float | None = None  # seconds of gateway silence; set by Ready
        self.max_frame = DEFAULT_MAX_FRAME  # the largest frame the gateway reads; set by Ready
        self.stalled: Callable[[], object | None] = lambda: None  # the loop's last stall

    async def run(self) -> None:
        """Connect, serve, reconnect; return only after :meth:`stop`."""
        failures = 0
        index = 0
        while not self._stop.is_set():
            url = self.urls[index % len(self.urls)]
            served = False
            reason = "connection failed"
            try:
                async with connect(
                    url, max_size=MAX_FRAME_IN, compression=None, ping_interval=None,
                    open_timeout=10, close_timeout=2, max_queue=64, write_limit=2**20,
                ) as ws:
                    self.ws = ws
                    served = await self._serve(ws, url)
                    reason = f"closed by gateway ({ws.close_code} {ws.close_reason or ''})".strip()
            except FatalGatewayError:
                raise
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except (RemoteProtocolError, GatewayRefused) as exc:
                reason = exc.message
            except InvalidURI as exc:
                raise FatalGatewayError(f"--gateway {url!r} is not a WebSocket URL: {exc}") from exc
            finally:
                self.ws = None
                if self.connected.is_set():  # it got as far as Ready, however it ended
                    served = True
                    self.connected.clear()
                    self.on_disconnect(reason)
            if self._stop.is_set():
                break
            failures = 0 if served else failures + 1
            index += 0 if served and len(self.urls) == 1 else 1
            delay = backoff(failures, self.rng)
            log.warning("gateway_unreachable" if not served else "gateway_disconnected",
                        url=url, reason=reason, retry_in=round(delay, 2))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def stop(self, code: int = 1000, reason: str = "worker shutdown") -> None:
        self._stop.set()
        self._wake.set()
        ws = self.ws
        if ws is not None:
            await ws.close(code, reason)

    def abort(self) -> None:
        """Stop now: drop the socket without a closing handshake; :meth:`run` returns."""
        self._stop.set()
        self._wake.set()
        ws = self.ws
        if ws is not None:
            ws.transport.abort()

    def send(self, message: m.Message) -> None:
        """Queue ``message`` for the current socket (dropped if there is none)."""
        if self.session is not None and self.connected.is_set():
            self.outbox.send(self.session.send(message))

    async def _serve(self, ws: ClientConnection, url: str) -> bool:
        """One socket's life. Returns True once the handshake got as far as Ready."""
        session = Session(Role.WORKER)
        self.session = session
        challenge = await self._expect(ws, session, m.Challenge)
        if challenge.protocol_version != PROTOCOL_VERSION:
            raise FatalGatewayError(
                f"the gateway at {url} speaks protocol {challenge.protocol_version}, this "
                f"worker speaks {PROTOCOL_VERSION}: install the same tether version on both"
            )
        hello = self.hello()
        mac = answer(self.signing_key or "", challenge.nonce, hello.instance_id)
        # The key first, alone in a small frame: the gateway reads the manifest only once
        # the worker has proven it holds the key.
        await ws.send(encode([session.send(m.Answer(instance_id=hello.instance_id, mac=mac))]))
        await self._expect(ws, session, m.Authenticated)
        await ws.send(encode([session.send(hello)]))
        ready = await self._expect(ws, session, m.Ready)
        # Every line logged from this socket's tasks (runs included) names the worker.
        structlog.contextvars.bind_contextvars(instance_id=hello.instance_id,
                                               session_id=ready.session_id)
        log.info("gateway_connected", url=url, session_id=ready.session_id,
                 gateway_id=challenge.gateway_id)
        self.max_frame = ready.max_frame_size
        for warning in ready.warnings:
            log.warning("gateway_warning", url=url, warning=warning)
        self.outbox.renumber()
        self.connected.set()
        self.on_ready(ready)
        writer = asyncio.create_task(self._write(ws, session), name="tether-writer")
        beats = asyncio.create_task(self._heartbeat(ws, ready.heartbeat_interval),
                                    name="tether-heartbeat")
        self._last_heard = self._last_tick = self.monotonic()
        self._deaf_after = ready.heartbeat_interval * 2.5
        try:
            async for frame in ws:
                self._last_heard = self.monotonic()
                for msg in decode_from_gateway(frame, max_size=MAX_FRAME_IN):
                    session.receive(msg)  # type: ignore[arg-type]  # it reads only .type
                    if isinstance(msg, m.GoAway):
                        log.info("gateway_going_away", reason=msg.reason)
                        await ws.close(1000, "gateway going away")
                        break
                    if isinstance(msg, m.Error):
                        log.error("gateway_error", code=msg.code, message=msg.message)
                        continue
                    self.on_message(msg)
        finally:
            writer.cancel()
            beats.cancel()
            self.session = None
        return True

    async def _expect(self, ws: ClientConnection, session: Session, kind: type[Any]) -> Any:
        """Receive the next handshake message, which must be a ``kind``."""
        frame = await asyncio.wait_for(ws.recv(), timeout=10)
        for msg in decode(frame, max_size=MAX_FRAME_IN):
            if isinstance(msg, m.Error):
                text = f"the gateway refused this worker: {msg.message}"
                log.error("gateway_refused", code=msg.code, message=msg.message)
                if msg.code in FATAL_CODES:
                    raise FatalGatewayError(text)
                raise GatewayRefused(text)
            session.receive(msg)
            if isinstance(msg, kind):
                return msg
        raise RemoteProtocolError(f"expected {kind.__name__} during the handshake")

    async def _write(self, ws: ClientConnection, session: Session) -> None:
        outbox = self.outbox
        try:
            while True:
                await outbox.ready.wait()
                # Once round the loop before taking: what was made ready along with the
                # first message (a leased run's task after its LeaseAccepted, the other runs
                # woken by the same frame) queues its checkpoints first, so they leave in one
                # frame and the gateway commits them in one batch, not two in a row.
                await asyncio.sleep(0)
                budget = min(FRAME_BYTES, self.max_frame)
                for frame in frames(outbox.take(), budget, FRAME_MESSAGES):
                    await ws.send(frame)
        except ConnectionClosed:
            pass

    async def _heartbeat(self, ws: ClientConnection, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.presumed_deaf():
                return
            self._last_tick = self.monotonic()
            self.send(m.Heartbeat(in_flight=self.in_flight()))

    def silent_too_long(self) -> bool:
        """Whether :meth:`presumed_deaf` would say so, without acting on it: any thread."""
        deaf_after = self._deaf_after
        if self.ws is None or not self.connected.is_set() or deaf_after is None:
            return False
        now = self.monotonic()
        return now - self._last_heard > deaf_after or now - self._last_tick > deaf_after

    def presumed_deaf(self) -> bool:
        """Whether the gateway has been silent for too long; if so, drop the socket.

        Also asked before a run starts a new step: after this process was frozen (SIGSTOP,
        a VM pause), its leases have likely been revoked and their steps done elsewhere, and
        the step must not start before the heartbeat task has had a chance to notice.
        """
        ws = self.ws
        if ws is None or not self.connected.is_set() or self._deaf_after is None:
            return False
        now = self.monotonic()
        silent = now - self._last_heard
        # The heartbeat task stalled as long: this process was frozen, and frames buffered
        # before the freeze may yet refresh _last_heard; the gateway has long dropped us.
        frozen = now - self._last_tick
        if silent <= self._deaf_after and frozen <= self._deaf_after:
            return False
        if self.stalled() is not None:
            # Not the gateway's fault: our own loop was blocked (the watchdog named the run).
            log.warning("socket_presumed_lost_after_loop_stall", silent_for=round(silent, 1),
                        stalled_for=round(frozen, 1))
        else:
            log.warning("gateway_unresponsive", silent_for=round(silent, 1),
                        stalled_for=round(frozen, 1))
        ws.transport.abort()  # drop the socket; every lease on it is presumed lost
        return True


def wire_size(value: Any) -> int:
    """An upper bound of ``value``'s msgpack size, without encoding it (cheap on large bytes).

    Strings count four bytes a character unless ASCII, every item its largest header, and a
    field name :data:`_FIELD_NAME` bytes. Checked for every checkpoint: kept fast.
    """
    kind = type(value)
    if kind is bytes:
        return len(value) + 5
    if kind is str:
        return (len(value) if value.isascii() else 4 * len(value)) + 5
    if kind is int or kind is float or kind is bool or value is None:
        return 9
    if isinstance(value, BaseModel):
        return fields_size(value.__dict__) + 5
    if isinstance(value, dict):
        size = 5
        for key, item in value.items():
            size += wire_size(key) + wire_size(item)
        return size
    if isinstance(value, (list, tuple)):
        size = 5
        for item in value:
            size += wire_size(item)
        return size
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
        return 5 + fields_size({n: getattr(value, n) for n in names})
    if isinstance(value, (int, float)):
        return 9
    return 4 * len(str(value)) + 16  # anything else is encoded as its text, at most


def fields_size(fields: dict[str, Any]) -> int:
    """:func:`wire_size` of a message's fields (their names are short: see _FIELD_NAME)."""
    size = _FIELD_NAME * len(fields)
    for value in fields.values():
        kind = type(value)
        if kind is bytes:
            size += len(value) + 5
        elif kind is float or kind is int or kind is bool or value is None:
            size += 9
        else:
            size += wire_size(value)
    return size


#: Upper bound of one field name's encoded size (names are short ASCII; a test checks).
_FIELD_NAME = 40
