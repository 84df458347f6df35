"""One worker socket: frames in, frames out. Decisions belong to the session and the engine.

The handshake (challenge, answer, authenticated, hello, ready) runs under a deadline. Until
the worker's answer proves its key, frames are capped at 64 KiB
(:data:`~protocol.messages.MAX_PREAUTH_FRAME`) and only :data:`PREAUTH_QUEUE` are buffered:
an unauthenticated peer cannot make the gateway read, buffer or parse anything large. Then
every decoded message is checked against the protocol session and handed to the engine.
Outgoing messages are queued and written by one task, so everything a commit produces for
this worker (acks, refusals, new leases) leaves in one frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.clock import Clock
from gateway.engine import Engine
from gateway.leases import Unanswered
from gateway.registry import Registry, WorkerEntry
from gateway.transport.auth import Authenticator
from protocol import hot
from protocol import messages as m
from protocol.codec import decode, decode_from_worker, frames
from protocol.errors import (
    AuthError,
    ExpressionError,
    InvalidInput,
    RemoteProtocolError,
    TetherError,
)
from protocol.ids import new_id
from protocol.limits import MAX_STEP_RESULT, MAX_STEPS
from protocol.manifest import check_function
from protocol.messages import PROTOCOL_VERSION
from protocol.session import Role, Session

log = structlog.get_logger("tether.transport")

_T = TypeVar("_T", m.Answer, m.Hello)

# Close codes: 1000 normal, 1001 going away, 1002 protocol error, 1008 policy (auth),
# 1011 internal error; 4000+ are ours.
CLOSE_HEARTBEAT_TIMEOUT = 4000
CLOSE_TRY_AGAIN_LATER = 1013

#: Frames a socket may have buffered before reading from it pauses: before it proves its
#: key, and after.
PREAUTH_QUEUE = 4
MAX_QUEUE = 64


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    gateway_id: str
    heartbeat_interval: float
    lease_ttl: float
    max_frame_in: int  # largest frame we accept from a worker
    max_frame_out: int  # largest frame we send (the worker accepts at least this)
    max_steps: int = MAX_STEPS
    max_step_result: int = MAX_STEP_RESULT
    handshake_timeout: float = 10.0
    max_handshakes: int = 64  # sockets not yet authenticated, at most


class Outbox:
    """Messages for one socket, written together by one task."""

    def __init__(self, ws: ServerConnection, session: Session, max_frame: int) -> None:
        self._ws = ws
        self._session = session
        self._max_frame = max_frame
        self._queue: list[m.Message] = []
        self._ready = asyncio.Event()
        self._woken = False  # _ready is set: the next message need not set it again
        self._task = asyncio.create_task(self._write(), name="tether-outbox")

    def send(self, message: m.Message) -> None:
        self._queue.append(self._session.send(message))
        if not self._woken:  # Event.set is a Python call: once per write, not per message
            self._woken = True
            self._ready.set()

    async def _write(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                self._woken = False
                batch, self._queue = self._queue, []
                for frame in frames(batch, self._max_frame):
                    await self._ws.send(frame)
        except ConnectionClosed:
            pass

    async def flush(self) -> None:
        """Write what is queued now (before a close)."""
        if self._queue:
            batch, self._queue = self._queue, []
            try:
                for frame in frames(batch, self._max_frame):
                    await self._ws.send(frame)
            except ConnectionClosed:
                pass

    def stop(self) -> None:
        self._task.cancel()


class WorkerConnection:
    """Serves one worker socket from handshake to close."""

    def __init__(
        self,
        ws: ServerConnection,
        *,
        engine: Engine,
        registry: Registry,
        auth: Authenticator,
        clock: Clock,
        settings: ConnectionSettings,
        leaving: Callable[[], bool] = lambda: False,
        on_authenticated: Callable[[], None] = lambda: None,
    ) -> None:
        self.ws = ws
        self.engine = engine
        self.registry = registry
        self.auth = auth
        self.clock = clock
        self.settings = settings
        self._leaving = leaving
        self._on_authenticated = on_authenticated
        self.session = Session(Role.GATEWAY)
        self.outbox = Outbox(ws, self.session, settings.max_frame_out)
        self.worker: WorkerEntry | None = None
        self.grants = Unanswered(after=settings.heartbeat_interval)
        #: Authenticated with a signing key being rotated out: closed when its grace ends.
        self.previous_key = False
        self._gone = False
        self._closing: asyncio.Future[None] | None = None
        self.log = log.bind(peer=_peer(ws))

    async def serve(self) -> None:
        try:
            hello = await asyncio.wait_for(self._handshake(), self.settings.handshake_timeout)
            await self._register(hello)
            await self._pump()
        except TimeoutError:
            await self._refuse(
                RemoteProtocolError(
                    f"no answer and hello within the {self.settings.handshake_timeout:g} s "
                    "handshake timeout"), 1002
            )
        except RemoteProtocolError as exc:
            await self._refuse(exc, 1002)
        except AuthError as exc:
            await self._refuse(exc, 1008)
        except (ExpressionError, InvalidInput) as exc:
            await self._refuse(exc, 1008)
        except ConnectionClosed as exc:
            self._disconnected(f"socket closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})")
        finally:
            self._disconnected("socket closed")
            self.outbox.stop()

    async def _handshake(self) -> m.Hello:
        nonce = os.urandom(32)
        self.outbox.send(
            m.Challenge(nonce=nonce, protocol_version=PROTOCOL_VERSION,
                        gateway_id=self.settings.gateway_id)
        )
        answer = await self._expect(m.Answer)
        self.previous_key = self.auth.check_worker(nonce, answer.instance_id, answer.mac)
        # Proven: from now on the socket may carry what an authenticated worker sends. Both
        # limits are read by websockets (>= 14) on every frame, so raising them here holds
        # from the next frame on.
        self.ws.protocol.max_message_size = self.settings.max_frame_in
        self.ws.recv_messages.high, self.ws.recv_messages.low = MAX_QUEUE, MAX_QUEUE // 4
        self._on_authenticated()
        self.outbox.send(m.Authenticated())
        hello = await self._expect(m.Hello)
        if hello.protocol_version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"protocol version {hello.protocol_version} is not supported; "
                f"this gateway speaks {PROTOCOL_VERSION}: upgrade tether on the "
                "worker or the gateway"
            )
        if hello.instance_id != answer.instance_id:
            raise RemoteProtocolError(
                f"hello names instance {hello.instance_id!r} but the answer was made for "
                f"{answer.instance_id!r}; send the same instance id in both"
            )
        return hello

    async def _expect(self, kind: type[_T]) -> _T:
        """The next handshake message, alone in its frame (the session refuses any other)."""
        while True:
            found: _T | None = None
            limit = self.ws.protocol.max_message_size or self.settings.max_frame_in
            for msg in decode(await self.ws.recv(), max_size=limit):
                # Every message of the frame goes through the session: nothing may follow
                # the expected one before the gateway answers it.
                self.session.receive(msg)
                if isinstance(msg, kind):
                    found = msg
            if found is not None:
                return found

    async def _register(self, hello: m.Hello) -> None:
        if len(hello.resume) > hello.capacity:
            raise InvalidInput(
                f"hello offers {len(hello.resume)} leases to resume, more than its capacity "
                f"({hello.capacity}); a worker holds at most its capacity")
        # Check every app before storing any: a refused hello must register nothing.
        for app in hello.apps:
            for fn in app.functions:
                check_function(f"{app.id}/{fn.id}", fn)
        for app in hello.apps:
            await self.engine.register_app(app, instance_id=hello.instance_id)
        # "{gateway}.{session}": a gateway's leases can be found (and requeued) by prefix.
        session_id = f"{self.settings.gateway_id}.{new_id(self.clock.now())}"
        self.worker = WorkerEntry(
            session_id=session_id,
            instance_id=hello.instance_id,
            capacity=hello.capacity,
            functions=frozenset(f"{a.id}/{f.id}" for a in hello.apps for f in a.functions),
            apps={a.id: a.version for a in hello.apps},
            connected_at=self.clock.now(),
            send=self._send,
            close=self.close,
            last_seen=self.clock.monotonic(),
        )
        self.registry.add(self.worker)
        self.engine.resume(self.worker, hello.resume)  # before any checkpoint of this socket
        self.log = self.log.bind(session_id=session_id, instance_id=hello.instance_id)
        self.outbox.send(
            m.Ready(session_id=session_id, heartbeat_interval=self.settings.heartbeat_interval,
                    lease_ttl=self.settings.lease_ttl, max_frame_size=self.settings.max_frame_in,
                    max_steps=self.settings.max_steps,
                    max_step_result=self.settings.max_step_result,
                    warnings=self.engine.take_warnings(hello.instance_id))
        )
        self.log.info("worker_connected", apps=sorted(self.worker.apps),
                      functions=len(self.worker.functions), capacity=hello.capacity)
        self.engine.worker_ready(self.worker)

    async def _pump(self) -> None:
        worker = self.worker
        assert worker is not None
        engine, session, limit = self.engine, self.session, self.settings.max_frame_in
        grants = self.grants
        waiting = grants.pending
        due = 1  # a worker numbers its checkpoints 1, 2, 3... on each socket
        async for frame in self.ws:
            worker.last_seen = self.clock.monotonic()
            # A frame's checkpoints go to the engine together, in order; whatever else the
            # frame holds is handled after the checkpoints before it (and if the frame turns
            # out bad midway, those before still go, as they would one by one).
            checkpoints: list[hot.AnyCheckpoint] = []
            try:
                for msg in decode_from_worker(frame, max_size=limit):
                    session.receive(msg)
                    if isinstance(msg, hot.LeaseAccepted):
                        # The answer to each grant, tested first: a Struct class is a cheap
                        # test, the checkpoint kinds below are ten pydantic classes it misses.
                        grants.answered(msg.run_id, msg.fence)
                        continue
                    if isinstance(msg, hot.ANY_CHECKPOINT):
                        if msg.seq != due:
                            # Acks are cumulative: acking past a hole would tell the worker to
                            # forget a checkpoint never committed. A new socket resends all.
                            raise RemoteProtocolError(
                                f"checkpoint {msg.seq} arrived where {due} was due: "
                                "checkpoints went missing; reconnect and resend the "
                                "unacknowledged ones")
                        due += 1
                        if msg.run_id in waiting:  # rare: its grant was answered before
                            grants.answered(msg.run_id, msg.fence)
                        checkpoints.append(msg)
                        continue
                    if checkpoints:
                        engine.checkpoints(worker, checkpoints)
                        checkpoints = []
                    if isinstance(msg, hot.HEARTBEAT):
                        self.outbox.send(m.HeartbeatAck())
                    elif isinstance(msg, hot.LEASE_ACCEPTED):
                        grants.answered(msg.run_id, msg.fence)
                    elif isinstance(msg, m.LeaseRejected):
                        grants.answered(msg.run_id, msg.fence)
                        self.log.info("lease_rejected", run_id=msg.run_id, reason=msg.reason)
                        engine.lease_rejected(worker, msg.run_id, msg.fence, msg.reason)
                    elif isinstance(msg, m.LoopStalled):
                        forgiven = engine.loop_stalled(worker, msg)
                        self.log.warning("worker_loop_stalled", seconds=round(msg.seconds, 1),
                                         run_id=msg.run_id, step_id=msg.step_id,
                                         forgiven=forgiven)
                    elif isinstance(msg, m.Drain):
                        worker.draining = True
                        self.log.info("worker_draining", in_flight=len(worker.in_flight))
                    elif isinstance(msg, m.Error):
                        # The worker's last word (the session is closed now): drop it at
                        # once, before the engine sends it anything more.
                        self.log.warning("worker_error", code=msg.code, message=msg.message)
                        self._disconnected(f"worker error: {msg.code}")
                        return
            finally:
                if checkpoints:
                    engine.checkpoints(worker, checkpoints)
        self._disconnected(f"socket closed ({self.ws.close_code})")

    def _send(self, message: m.Message) -> None:
        """What the engine sends this worker; grants are kept until the worker answers."""
        if type(message) is m.LeaseGranted:
            self.grants.sent(message, self.clock.monotonic())
        self.outbox.send(message)

    def resend_grants(self, now: float) -> int:
        """Send again the grants unanswered for a heartbeat interval (see
        :class:`~gateway.leases.Unanswered`); returns how many."""
        worker = self.worker
        if worker is None or self._gone or worker.draining or not self.grants:
            return 0
        again = self.grants.due(worker.in_flight, now)
        for grant in again:
            self.outbox.send(grant)
        if again:
            self.log.warning("lease_grants_resent", count=len(again),
                             run_ids=[g.run_id for g in again[:20]],
                             hint="the worker did not answer these grants: something between "
                                  "it and the gateway loses messages")
        return len(again)

    async def _refuse(self, exc: TetherError, code: int) -> None:
        """Tell the peer what it did wrong, close its socket, keep serving everyone else."""
        self.log.warning("worker_refused", code=exc.code, error=exc.message)
        # Out of the registry before the Error closes the session: a commit that lands while
        # the socket closes must not send this worker acks or leases (the session would refuse
        # them, and the engine with it).
        self._disconnected(f"refused: {exc.code}")
        with contextlib.suppress(TetherError):  # the session may already be closed
            self.outbox.send(m.Error(code=exc.code, message=exc.message))
        await self.outbox.flush()
        await self.ws.close(code, _reason(exc.message))

    def close(self, code: int, reason: str) -> None:
        """Drop this worker now (leases go back at once) and close its socket behind it."""
        self._disconnected(reason)
        self._closing = asyncio.ensure_future(self.ws.close(code, _reason(reason)))

    def _disconnected(self, reason: str) -> None:
        if self._gone:
            return
        self._gone = True
        worker = self.worker
        if worker is None:
            return
        self.registry.remove(worker.session_id)
        self.log.info("worker_disconnected", reason=reason, in_flight=len(worker.in_flight))
        self.engine.worker_gone(worker, reason, lost=not self._leaving())


def _reason(text: str) -> str:
    """A close reason must fit in 123 bytes of UTF-8."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    except Exception:  # a socket already gone has no address
        return "?"
