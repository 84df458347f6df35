"""One Inngest SDK socket, seen by Tether as one worker session.

The SDK side speaks Inngest's connect protocol (:mod:`gateway.inngest.wire`); the Tether side
is a :class:`~gateway.registry.WorkerEntry` in the registry, so the engine leases runs to it,
counts its capacity and requeues its leases when it goes, exactly as for a Tether worker.
Each lease is driven by a :class:`~gateway.inngest.executor.RunDriver` task: one executor
request at a time, each reply turned into checkpoints.

::

    gateway                                     SDK
      | --- GATEWAY_HELLO -------------------> |
      | <-- WORKER_CONNECT (apps, token) ------ |   registers the apps; checks the token
      | --- GATEWAY_CONNECTION_READY --------> |
      | --- GATEWAY_EXECUTOR_REQUEST --------> |   one per request of a leased run
      | <-- WORKER_REQUEST_ACK ---------------- |
      | <-- WORKER_REQUEST_EXTEND_LEASE ------- |   answered with a new lease id, or an
      | --- ..._EXTEND_LEASE_ACK ------------> |   empty one once the run is taken away
      | <-- WORKER_REPLY ---------------------- |   (or POST /v0/connect/flush)
      | --- WORKER_REPLY_ACK ----------------> |
      | <-- WORKER_HEARTBEAT / --- GATEWAY_HEARTBEAT
      | <-- WORKER_PAUSE ---------------------- |   no new leases; in-flight runs finish
      | --- GATEWAY_CLOSING -----------------> |   the gateway stops: reconnect
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.inngest import wire
from gateway.inngest.executor import Reply, ReplyError, Request, RunDriver
from gateway.inngest.registration import InngestFunction, app_manifest
from gateway.inngest.wire import Kind
from gateway.registry import WorkerEntry
from protocol import messages as m
from protocol.errors import TetherError
from protocol.ids import new_id
from protocol.manifest import check_function

if TYPE_CHECKING:
    from gateway.inngest.bridge import InngestBridge

log = structlog.get_logger("tether.inngest")

#: The SDKs' default when they do not say how many requests they take at once.
DEFAULT_CAPACITY = 100
#: How often the SDK should extend a request's lease; whole seconds (Python reads no other
#: format, and without it neither extends leases nor flushes replies).
EXTEND_LEASE_INTERVAL = 5
#: Python heartbeats every 10 s whatever it is told; 3 missed beats lose the socket.
HEARTBEAT_INTERVAL = 10
MISSED_HEARTBEATS = 3
#: Largest frame from an SDK whose session token was checked: a reply carries a step result
#: (4 MiB by default) in JSON.
MAX_FRAME = 8 * 1024 * 1024
#: A request the SDK neither acknowledged nor extended for this long is presumed dropped.
REQUEST_LEASE = EXTEND_LEASE_INTERVAL * 3


class InngestConnection:
    """Serves one SDK socket from ``GATEWAY_HELLO`` to close."""

    def __init__(self, ws: ServerConnection, bridge: InngestBridge) -> None:
        self.ws = ws
        self.bridge = bridge
        self.worker: WorkerEntry | None = None
        # The SDK asked to say WORKER_READY itself (TypeScript does): no run is leased to it
        # before, or it drops the request as "unexpected during setup".
        self._awaiting_ready = False
        self.functions: dict[str, InngestFunction] = {}  # Tether function id -> function
        self.app_of: dict[str, str] = {}  # Tether function id -> Inngest app name
        self.last_heard = bridge.clock.monotonic()
        self._seq = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, RunDriver] = {}
        self._revoked: set[str] = set()
        #: request id -> (run id, current lease id) of requests the SDK is working on
        self._leases: dict[str, tuple[str, str]] = {}
        #: request id -> when the SDK last showed it works on it (ack, lease extension)
        self._alive: dict[str, float] = {}
        self._gone = False
        self._closing: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        #: Checkpoints committed (or refused) up to this seq, and who waits for which seq.
        self._acked = 0
        self._commits: list[tuple[int, asyncio.Future[bool]]] = []
        self._refused: set[int] = set()
        self.log = log.bind(peer=_peer(ws))

    # --- the socket ----------------------------------------------------------------------

    def send(self, kind: Kind, payload: Any = None) -> None:
        self._queue.put_nowait(wire.frame(kind, payload))

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while (data := await self._queue.get()) is not None:
                await self.ws.send(data)

    async def serve(self) -> None:
        self._writer = writer = asyncio.create_task(self._write(), name="tether-inngest-writer")
        try:
            self.send(Kind.GATEWAY_HELLO)
            await asyncio.wait_for(self._handshake(), self.bridge.handshake_timeout)
            await self._pump()
        except TimeoutError:
            await self._close(1002, "no WORKER_CONNECT within the handshake timeout")
        except (TetherError, wire.WireError) as exc:
            self.log.warning("inngest_worker_refused", error=str(exc))
            self.send(Kind.SYNC_FAILED, _system_error("sync_failed", str(exc)))
            await self._close(1008, str(exc))
        except ConnectionClosed:
            pass
        finally:
            self._disconnected("socket closed")
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(writer, 2)

    async def _close(self, code: int, reason: str) -> None:
        """Write what is queued (a SYNC_FAILED...), then close with ``code``."""
        self._queue.put_nowait(None)
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._writer), 2)
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason.encode()[:120].decode(errors="ignore"))

    async def _handshake(self) -> None:
        while True:
            kind, payload = wire.unframe(_bytes(await self.ws.recv()))
            if kind == Kind.WORKER_CONNECT:
                break
            self.log.debug("inngest_frame_before_connect", kind=_name(kind))
        data = wire.parse("WorkerConnectRequestData", payload)
        if not self.bridge.take_token(data.auth_data.session_token, data.connection_id):
            raise _Refused("unknown or expired session token: call /v0/connect/start again")
        if not data.apps:
            raise _Refused("WORKER_CONNECT names no app")
        manifests = []
        slugs: dict[str, str] = {}
        for app in data.apps:
            manifest, by_slug = app_manifest(app.app_name, app.app_version, bytes(app.functions))
            for fn in manifest.functions:
                check_function(f"{manifest.id}/{fn.id}", fn)
            manifests.append(manifest)
            for slug, found in by_slug.items():
                full = f"{manifest.id}/{found.short_id}"
                self.functions[full] = found
                self.app_of[full] = app.app_name
                slugs[slug] = full
        self.bridge.slugs.update(slugs)
        instance = data.instance_id or data.connection_id
        for manifest in manifests:
            await self.bridge.engine.register_app(manifest, instance_id=instance)
        clock = self.bridge.clock
        capacity = int(data.max_worker_concurrency) if data.max_worker_concurrency > 0 \
            else DEFAULT_CAPACITY
        session_id = f"{self.bridge.gateway_id}.{new_id(clock.now())}"
        self.worker = WorkerEntry(
            session_id=session_id, instance_id=instance, capacity=min(capacity, 100_000),
            functions=frozenset(self.functions), apps={a.id: a.version for a in manifests},
            connected_at=clock.now(), send=self._from_engine, close=self._close_soon,
            last_seen=clock.monotonic(), draining=bool(data.worker_manual_readiness_ack),
        )
        self._awaiting_ready = self.worker.draining
        self.ws.protocol.max_message_size = MAX_FRAME
        self.bridge.registry.add(self.worker)
        self.bridge.connections.add(self)
        self.log = self.log.bind(session_id=session_id, instance_id=instance)
        self.send(Kind.GATEWAY_CONNECTION_READY, wire.new(
            "GatewayConnectionReadyData", heartbeat_interval=f"{HEARTBEAT_INTERVAL}s",
            extend_lease_interval=f"{EXTEND_LEASE_INTERVAL}s"))
        self.log.info("inngest_worker_connected", apps=sorted(a.id for a in manifests),
                      functions=len(self.functions), capacity=self.worker.capacity,
                      sdk=f"{data.sdk_language}/{data.sdk_version}")
        if not self._awaiting_ready:
            self.bridge.engine.worker_ready(self.worker)

    async def _pump(self) -> None:
        async for raw in self.ws:
            self.last_heard = self.bridge.clock.monotonic()
            try:
                kind, payload = wire.unframe(_bytes(raw))
            except wire.WireError as exc:
                self.log.warning("inngest_frame_malformed", error=str(exc))
                continue
            if kind == Kind.WORKER_HEARTBEAT:
                self.send(Kind.GATEWAY_HEARTBEAT)
            elif kind == Kind.WORKER_REPLY:
                self._reply(payload)
            elif kind == Kind.WORKER_REQUEST_EXTEND_LEASE:
                self._extend(payload)
            elif kind == Kind.WORKER_PAUSE:
                if self.worker is not None:
                    self.worker.draining = True
                self._awaiting_ready = False  # a READY after this does not undo the pause
                self.log.info("inngest_worker_paused", in_flight=len(self._drivers))
            elif kind == Kind.WORKER_REQUEST_ACK:
                self._heard_about(payload)
            elif kind == Kind.WORKER_READY:
                if self.worker is not None and self._awaiting_ready:
                    self._awaiting_ready = False
                    self.worker.draining = False
                    self.bridge.engine.worker_ready(self.worker)
            else:
                self.log.info("inngest_frame_ignored", kind=_name(kind))

    def _reply(self, payload: bytes) -> None:
        try:
            reply = wire.parse("SDKResponse", payload)
        except wire.WireError as exc:
            self.log.warning("inngest_reply_malformed", error=str(exc))
            return
        self.send(Kind.WORKER_REPLY_ACK, wire.new("WorkerReplyAckData",
                                                  request_id=reply.request_id))
        self.bridge.deliver(reply)

    def _heard_about(self, payload: bytes) -> None:
        try:
            data = wire.parse("WorkerRequestAckData", payload)
        except wire.WireError:
            return
        if data.request_id in self._alive:
            self._alive[data.request_id] = self.bridge.clock.monotonic()

    def _extend(self, payload: bytes) -> None:
        try:
            data = wire.parse("WorkerRequestExtendLeaseData", payload)
        except wire.WireError as exc:
            self.log.warning("inngest_extend_malformed", error=str(exc))
            return
        held = self._leases.get(data.request_id)
        new_lease = ""
        if held is not None and held[1] == data.lease_id and held[0] not in self._revoked:
            new_lease = secrets.token_hex(16)
            self._leases[data.request_id] = (held[0], new_lease)
            self._alive[data.request_id] = self.bridge.clock.monotonic()
        self.send(Kind.WORKER_REQUEST_EXTEND_LEASE_ACK, wire.new(
            "WorkerRequestExtendLeaseAckData", request_id=data.request_id,
            function_slug=data.function_slug, new_lease_id=new_lease))

    def closing(self) -> None:
        """The gateway stops: send the SDK to ``/v0/connect/start`` again."""
        self.send(Kind.GATEWAY_CLOSING)

    def heard_lately(self, now: float) -> bool:
        return now - self.last_heard <= HEARTBEAT_INTERVAL * MISSED_HEARTBEATS

    def _close_soon(self, code: int, reason: str) -> None:
        self._disconnected(reason)
        self._closing = asyncio.ensure_future(self._close(code, reason))

    def _disconnected(self, reason: str) -> None:
        if self._gone:
            return
        self._gone = True
        self.bridge.connections.discard(self)
        for task in self._drivers.values():
            task.cancel()
        for _, future in self._commits:
            if not future.done():
                future.set_result(False)
        worker = self.worker
        if worker is None:
            return
        self.bridge.registry.remove(worker.session_id)
        self.log.info("inngest_worker_disconnected", reason=reason,
                      in_flight=len(worker.in_flight))
        self.bridge.engine.worker_gone(worker, reason, lost=not self.bridge.leaving)

    # --- the engine's side ---------------------------------------------------------------

    def _from_engine(self, msg: m.Message) -> None:
        if isinstance(msg, m.LeaseGranted):
            self._lease(msg)
        elif isinstance(msg, m.CheckpointAck):
            self._acked = max(self._acked, msg.upto)
            waiting = []
            for seq, future in self._commits:
                if seq > self._acked:
                    waiting.append((seq, future))
                elif not future.done():
                    future.set_result(seq not in self._refused)
            self._commits = waiting
        if isinstance(msg, m.CheckpointRefused):
            self._refused.add(msg.seq)
        if isinstance(msg, (m.LeaseRevoked, m.CheckpointRefused)):
            self._revoked.add(msg.run_id)
            self.log.info("inngest_run_revoked", run_id=msg.run_id, reason=msg.reason)
        elif isinstance(msg, m.GoAway):
            self.closing()

    async def committed(self, seq: int) -> bool:
        """Until checkpoint ``seq`` of this socket is committed: True, or False if refused."""
        if seq <= self._acked:
            return seq not in self._refused
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._commits.append((seq, future))
        return await future

    async def streamed(self, run_id: str, queue_item: str, ops: Any) -> bool:
        """Ops the SDK streamed for ``run_id`` during its request, applied as checkpoints;
        True once they are committed, False if the lease they name is no longer current.

        Raises:
            ReplyError: the ops cannot be understood.
        """
        task = self._drivers.get(run_id)
        driver = self._running.get(run_id)
        if task is None or driver is None or driver.queue_item != queue_item \
                or run_id in self._revoked:
            return False
        pending = driver.apply_streamed(ops, now=self.bridge.clock.now())
        last = self._checkpoint(driver, pending)
        return await self.committed(last) if last else True

    def _lease(self, lease: m.LeaseGranted) -> None:
        fn = self.functions.get(lease.function_id)
        worker = self.worker
        assert worker is not None
        if fn is None:
            self.bridge.engine.lease_rejected(worker, lease.run_id, lease.fence,
                                              "function not served by this Inngest worker")
            return
        self._revoked.discard(lease.run_id)
        driver = RunDriver(lease=lease, function=fn, slugs=self.bridge.slugs)
        task = asyncio.create_task(self._drive(driver), name=f"tether-inngest-{lease.run_id}")
        self._drivers[lease.run_id] = task
        self._running[lease.run_id] = driver
        self.bridge.runs[lease.run_id] = self
        task.add_done_callback(lambda _: self._ended(lease.run_id, task))

    def _ended(self, run_id: str, task: asyncio.Task[None]) -> None:
        if self._drivers.get(run_id) is task:
            del self._drivers[run_id]
            self._running.pop(run_id, None)
            if self.bridge.runs.get(run_id) is self:
                del self.bridge.runs[run_id]

    async def _drive(self, driver: RunDriver) -> None:
        """Drive one lease; a bug here fails the run with its reason rather than holding the
        lease forever."""
        try:
            await self._steps(driver)
        except Exception as exc:
            self.log.error("inngest_driver_failed", run_id=driver.lease.run_id, exc_info=exc)
            if not driver.done:
                driver.done = True
                self._checkpoint(driver, [_failure(driver, f"the Inngest bridge failed: {exc!r}")])

    async def _steps(self, driver: RunDriver) -> None:
        worker = self.worker
        assert worker is not None
        run_id = driver.lease.run_id
        clock = self.bridge.clock
        while not driver.done and run_id not in self._revoked:
            request = driver.next_request()
            if request is None:
                self._checkpoint(driver, driver.finish())
                return
            if worker.draining and self._requests_sent(driver):
                # The SDK is shutting down and takes no new request: another worker goes on.
                self._checkpoint(driver, [(m.LeaseReleased, {"reason": "Inngest worker paused"})])
                return
            sent = clock.now()
            reply = await self._ask(driver, request)
            if run_id in self._revoked:
                return
            if reply is None:
                self._checkpoint(driver, [(m.LeaseReleased, {
                    "reason": "the Inngest worker neither acknowledged nor extended a request"})])
                return
            try:
                pending = driver.apply(request, reply, now=clock.now(), sent=sent)
            except ReplyError as exc:
                self.log.warning("inngest_reply_refused", run_id=run_id, error=str(exc))
                driver.done = True
                pending = [_failure(driver, str(exc))]
            self._checkpoint(driver, pending)

    @staticmethod
    def _requests_sent(driver: RunDriver) -> bool:
        return bool(driver.stack) or driver.parallel

    async def _ask(self, driver: RunDriver, request: Request) -> Reply | None:
        """Send one executor request and wait for its reply; None if the SDK dropped it (no
        ack or lease extension for :data:`REQUEST_LEASE` seconds: it was paused, or lost the
        request), so the run goes back to the queue."""
        lease = driver.lease
        fn = driver.function
        clock = self.bridge.clock
        request_id = new_id(clock.now())
        lease_id = secrets.token_hex(16)
        future = self.bridge.expect(request_id)
        self._leases[request_id] = (lease.run_id, lease_id)
        self._alive[request_id] = clock.monotonic()
        app = self.app_of.get(lease.function_id, "")
        try:
            self.send(Kind.GATEWAY_EXECUTOR_REQUEST, wire.new(
                "GatewayExecutorRequestData", request_id=request_id, app_id=app, app_name=app,
                function_id=lease.function_id, function_slug=fn.slug, step_id=request.step_id,
                request_payload=request.body, run_id=lease.run_id, lease_id=lease_id,
                job_id=f"{lease.run_id}.{lease.fence}"))
            while True:
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), EXTEND_LEASE_INTERVAL)
                if clock.monotonic() - self._alive[request_id] > REQUEST_LEASE:
                    self.log.warning("inngest_request_dropped", run_id=lease.run_id,
                                     request_id=request_id, seconds=REQUEST_LEASE)
                    return None
        finally:
            self._leases.pop(request_id, None)
            self._alive.pop(request_id, None)
            self.bridge.forget(request_id)

    def _checkpoint(self, driver: RunDriver, pending: list[Any]) -> int:
        """Queue ``pending`` for the next commit; the seq of the last one (0 for none)."""
        worker = self.worker
        assert worker is not None
        lease = driver.lease
        try:
            messages = [cls(seq=0, run_id=lease.run_id, fence=lease.fence, **fields)
                        for cls, fields in pending]
        except ValidationError as exc:  # a value the SDK sent that Tether refuses (a NUL...)
            self.log.warning("inngest_reply_refused", run_id=lease.run_id, error=str(exc))
            driver.done = True
            cls, fields = _failure(driver, f"the SDK's reply cannot be recorded: {exc}")
            messages = [cls(seq=0, run_id=lease.run_id, fence=lease.fence, **fields)]
        last = 0
        for message in messages:
            self._seq += 1
            last = self._seq
            self.bridge.engine.checkpoint(worker, message.model_copy(update={"seq": self._seq}))
        return last


def _failure(driver: RunDriver, reason: str) -> tuple[type[m.RunFailed], dict[str, Any]]:
    return (m.RunFailed, {"attempt": driver.attempt, "final": True,
                          "error": m.ErrorInfo(name="InngestBridgeError",
                                               message=reason[:65536])})


class _Refused(TetherError):
    code = "inngest_refused"
    http_status = 400


def _name(kind: Kind | int) -> str:
    return kind.name if isinstance(kind, Kind) else str(kind)


def _bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _system_error(code: str, message: str) -> Any:
    return wire.new("SystemError", code=code, message=message[:4096])


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    except Exception:
        return "?"

