"""The worker process: leases in, checkpoints out, up to ``concurrency`` runs at once.

Rule 1: never hold more runs than ``concurrency``; a lease beyond it is rejected, not queued.

Rule 2: an execution is identified by (run id, fence). A run whose old lease was lost may be
leased to this worker again while the old execution finishes its last step; the two never
mix, and the old one's late checkpoints are refused by the gateway.

Rule 3 (drain): on SIGTERM, tell the gateway to send nothing more, let running steps finish
within the drain timeout, hand every run back at its next step boundary (or at the timeout),
wait for the last acknowledgements, and close normally.

Rule 4: a second SIGTERM/SIGINT stops at once. The steps still running are abandoned, and
logged by name: the gateway requeues their runs when the socket drops, and they run again
elsewhere (at-least-once, as after a crash).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from protocol import messages as m
from protocol.limits import VERSION as SDK_VERSION
from protocol.messages import PROTOCOL_VERSION
from worker.app import App, Function
from worker.connection import GatewayLink, Outbox
from worker.runner import Limits, RunExecution
from worker.threads import StepThreads
from worker.watchdog import LoopWatchdog
from worker.wire import Ack, AnyGrant, Grant

#: Ended leases remembered, to answer a grant sent again after its run ended here. Any
#: checkpoint of a lease counts as its answer, so such a grant only crosses our checkpoints on
#: the wire: the runs that end within one round trip are far fewer.
FINISHED_KEPT = 4096

if TYPE_CHECKING:
    from worker.tracing import WorkerTracing

log = structlog.get_logger("tether.worker")


#: Exit status after a second signal abandoned running steps (128 + SIGINT, as shells do).
EXIT_ABANDONED = 130

Key = tuple[str, int]  # (run id, fence)

#: Threads kept for plain step callables (more are added while steps block).
CORE_THREADS = 16

#: Checkpoints built without pydantic's validation (type -> tag): every run sends them, and
#: the runner makes every field of them itself (the step's id, which it checked, its attempt
#: and output, the clock; the run's output and warnings), in the model's order.
#: tests/unit/test_runner.py builds each one the runner emits with validation. The others
#: carry values from user code (a sleep's duration, a retry delay, an error), checked by
#: pydantic on their way out.
_UNVALIDATED: dict[type[m._Checkpoint], str] = {
    kind: kind.model_fields["type"].default for kind in (m.StepCompleted, m.RunCompleted)}


class Worker:
    """Serves ``apps`` to the gateways at ``gateways`` until drained.

    Args:
        apps: the apps whose functions this worker runs.
        gateways: WebSocket URLs; the worker moves to the next one when one goes away.
        concurrency: runs in flight at most.
        instance_id: a stable name for this process (default: hostname-pid).
        signing_key: the gateway's signing key (not needed against ``--dev`` gateways).
        drain_timeout: seconds running steps get to finish on shutdown.
        tracer_provider: an OpenTelemetry ``TracerProvider``: each ``step.run`` attempt
            gets a span under its run's (extra ``tether[otel]``). None: no tracing, and
            OpenTelemetry is not imported.
    """

    def __init__(
        self,
        apps: Sequence[App],
        *,
        gateways: Sequence[str] = ("ws://127.0.0.1:8289/connect",),
        concurrency: int = 100,
        instance_id: str | None = None,
        signing_key: str | None = None,
        drain_timeout: float = 30.0,
        limits: Limits | None = None,
        tracer_provider: Any = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.apps = list(apps)
        self.functions: dict[str, Function] = {
            f.id: f for app in self.apps for f in app.functions.values()
        }
        self.concurrency = concurrency
        self.instance_id = instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.drain_timeout = drain_timeout
        self.limits = limits or Limits()
        self.executions: dict[Key, RunExecution] = {}
        self.tracing: WorkerTracing | None = None
        if tracer_provider is not None:
            from worker.tracing import WorkerTracing

            self.tracing = WorkerTracing(tracer_provider)
        #: Executions whose lease is still ours (what the gateway counts against capacity):
        #: a lease leaves it when lost, whoever noticed, or when its run ends here.
        self._holding: set[Key] = set()
        #: Leases that ended here (the last FINISHED_KEPT, oldest first in the deque): a grant
        #: of one sent again is answered, never run a second time.
        self._finished: set[Key] = set()
        self._finished_order: deque[Key] = deque()
        self.draining = False
        self.outbox = Outbox()
        #: Threads for plain step callables and ``def`` functions: a few serve short steps;
        #: more are added when steps block, up to one ``def`` body and one step per run.
        self.threads = StepThreads(core=min(CORE_THREADS, concurrency),
                                   limit=concurrency * 2 + 16)
        self.link = GatewayLink(
            gateways,
            hello=self._hello,
            signing_key=signing_key,
            on_message=self._on_message,
            on_ready=self._on_ready,
            on_disconnect=self._on_disconnect,
            outbox=self.outbox,
            in_flight=lambda: len(self._holding),
        )
        self._idle = asyncio.Event()
        self._idle.set()
        self.watchdog = LoopWatchdog()
        self.link.stalled = self.watchdog.recent
        self._stall_report: m.LoopStalled | None = None  # for the next socket
        self.session_id: str | None = None  # of the current (or last) socket
        self.abandoned: list[dict[str, Any]] | None = None  # set by a second signal
        self._drain_task: asyncio.Task[None] | None = None
        #: How long leases stay ours without a socket (the gateway's lease TTL, from Ready):
        #: a gateway back within it gives them back (Hello.resume) and no step runs twice.
        self.lease_ttl = 15.0
        self._give_up: asyncio.TimerHandle | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until :meth:`drain` (or a fatal refusal from the gateway)."""
        log.info("worker_starting", instance_id=self.instance_id,
                 functions=sorted(self.functions), concurrency=self.concurrency)
        self.watchdog.start()
        try:
            await self.link.run()
        finally:
            self.watchdog.stop()

    async def drain(self) -> None:
        """Stop taking work, finish or hand back what is held, then disconnect."""
        if self.draining:
            return
        self.draining = True
        log.info("worker_draining", in_flight=len(self.executions),
                 timeout=self.drain_timeout)
        self.link.send(m.Drain())
        for execution in list(self.executions.values()):
            execution.drain()
        try:
            await asyncio.wait_for(self._idle.wait(), self.drain_timeout)
        except TimeoutError:
            for execution in list(self.executions.values()):
                execution.hand_back_now()
        if self.link.connected.is_set():
            try:
                await asyncio.wait_for(self.outbox.drained.wait(), 5)
            except TimeoutError:
                log.warning("drain_unacknowledged", checkpoints=len(self.outbox.unacked))
        await self.link.stop(1000, "worker shutdown")
        self.threads.shutdown()
        log.info("worker_stopped")

    def interrupt(self) -> None:
        """SIGTERM/SIGINT: the first one drains; the next one stops at once."""
        if self._drain_task is None and not self.draining:
            self._drain_task = asyncio.ensure_future(self.drain())
        else:
            self.stop_now()

    def stop_now(self) -> None:
        """Stop without waiting for running steps; log them (their runs go to other workers)."""
        if self.abandoned is not None:
            return
        abandoned = [
            {"run_id": e.run_id, "function_id": e.function.id, "steps": sorted(e.running)}
            for e in self.executions.values() if not e.ended and not e.lost
        ]
        self.abandoned = abandoned
        log.warning(
            "worker_stopped_abruptly", runs=len(abandoned), abandoned=abandoned,
            hint="a second signal stops at once: these runs go back to the gateway and "
                 "their running steps run again on another worker",
        )
        for execution in list(self.executions.values()):
            execution.lose("worker stopped")
        if self._drain_task is not None:
            self._drain_task.cancel()
        self.link.abort()
        self.watchdog.stop()
        self.threads.shutdown()

    def _hello(self) -> m.Hello:
        return m.Hello(
            protocol_version=PROTOCOL_VERSION, instance_id=self.instance_id,
            sdk_version=SDK_VERSION, capacity=self.concurrency,
            apps=[app.manifest() for app in self.apps], resume=self._held_leases(),
        )

    def _held_leases(self) -> list[m.Held]:
        """Leases to offer back on a new socket: runs still executing, and runs that ended
        while no gateway heard (their unacknowledged checkpoints are resent under them)."""
        held = {key for key, e in self.executions.items() if not e.lost and not e.ended}
        held |= {(c.run_id, c.fence) for c in self.outbox.unacked.values()}
        return [m.Held(run_id=run_id, fence=fence)
                for run_id, fence in sorted(held)[:self.concurrency]]

    def _on_ready(self, ready: m.Ready) -> None:
        # The gateway's limits rule (SPEC §5 defaults, configurable on the gateway).
        self.limits = Limits(max_steps=ready.max_steps, max_step_result=ready.max_step_result,
                             max_output=ready.max_step_result, max_frame=ready.max_frame_size)
        self.watchdog.threshold = ready.heartbeat_interval
        self.lease_ttl = ready.lease_ttl
        self.session_id = ready.session_id
        if self._give_up is not None:  # offered back in the hello: revoked ones are lost
            self._give_up.cancel()
            self._give_up = None
        if self._stall_report is not None:
            self.link.send(self._stall_report)
            self._stall_report = None
        if self.draining:
            self.link.send(m.Drain())

    def _on_disconnect(self, reason: str) -> None:
        stall = self.watchdog.recent()
        if stall is not None and stall.doing is not None and self.session_id is not None:
            # The gateway presumed us lost because one run blocked the loop: tell it, on the
            # next socket, so that it charges the lost leases to that run alone.
            until = stall.ended if stall.ended is not None else self.watchdog.monotonic()
            self._stall_report = m.LoopStalled(
                session_id=self.session_id, seconds=until - stall.since,
                run_id=stall.doing.run_id, step_id=stall.doing.step_id)
        # A gateway that lives requeued the leases of this socket (its next hello's offers are
        # revoked); one that restarted kept them for us a lease TTL. Meanwhile start no new
        # step (hand each run back at its next step boundary), and give up after the TTL.
        live = [e for e in self.executions.values() if not e.lost and not e.ended]
        for execution in live:
            execution.drain()
        if live and self._give_up is None:
            self._give_up = asyncio.get_running_loop().call_later(
                self.lease_ttl, self._lose_all, f"no gateway within {self.lease_ttl:g} s of "
                f"losing the socket ({reason})")

    def _lose_all(self, reason: str) -> None:
        self._give_up = None
        for execution in list(self.executions.values()):
            self._lose(execution, reason)

    # --- messages ------------------------------------------------------------------------

    def _on_message(self, msg: m.Message | Grant | Ack) -> None:
        if type(msg) is Grant or isinstance(msg, m.LeaseGranted):
            self._on_lease(msg)
        elif type(msg) is Ack or isinstance(msg, m.CheckpointAck):
            self.outbox.ack(msg.upto)
        elif isinstance(msg, m.CheckpointRefused):
            checkpoint = self.outbox.unacked.get(msg.seq)
            fence = checkpoint.fence if checkpoint is not None else None
            for key, execution in list(self.executions.items()):
                if key[0] == msg.run_id and (fence is None or key[1] == fence):
                    self._lose(execution, f"checkpoint refused: {msg.reason}")
        elif isinstance(msg, m.LeaseRevoked):
            revoked = self.executions.get((msg.run_id, msg.fence))
            if revoked is not None:
                self._lose(revoked, f"lease revoked: {msg.reason}")

    def _on_lease(self, lease: AnyGrant) -> None:
        key = (lease.run_id, lease.fence)
        if key in self.executions or key in self._finished:
            # The same lease twice: the gateway sends a grant again when it heard no answer
            # (the grant or our answer was lost on the way), or an intermediary repeated it.
            # One execution per lease, or two would race their checkpoints and the run could
            # end on unrecorded results; answer again so the gateway stops resending.
            log.info("lease_duplicate", run_id=lease.run_id, fence=lease.fence)
            self.link.send(_accepted(lease))
            return
        function = self.functions.get(lease.function_id)
        reason = None
        if self.draining:
            reason = "worker draining"
        elif function is None:
            reason = f"function {lease.function_id!r} is not served by this worker"
        elif len(self._holding) >= self.concurrency:
            reason = f"worker at capacity ({self.concurrency})"
        if reason is not None or function is None:
            self.link.send(m.LeaseRejected(run_id=lease.run_id, fence=lease.fence,
                                           reason=reason or ""))
            return
        execution = RunExecution(
            lease, function, emit=self._emitter(key), threads=self.threads,
            limits=self.limits, on_end=self._ended,
            lease_ok=self._lease_ok, lease_fine=self._lease_fine,
            tracing=None if self.tracing is None else self.tracing.run(
                lease.run_id, lease.function_id, lease.traceparent),
        )
        self.executions[key] = execution
        self._holding.add(key)
        self._idle.clear()
        self.link.send(_accepted(lease))
        execution.start()

    def _lease_ok(self) -> bool:
        """Whether a run may start a step (on the loop: drops a socket presumed deaf)."""
        return not self.link.presumed_deaf()

    def _lease_fine(self) -> bool:
        """Whether a run may start a step, without acting on a doubt (any thread)."""
        return not self.link.silent_too_long()

    def _emitter(self, key: Key) -> Any:
        run_id, fence = key
        outbox = self.outbox

        def emit(kind: type[m._Checkpoint], fields: dict[str, Any]) -> None:
            tag = _UNVALIDATED.get(kind)
            if tag is None:
                outbox.emit(kind(seq=outbox.next_seq(), run_id=run_id, fence=fence, **fields))  # type: ignore[arg-type]
                return
            outbox.emit(m.unvalidated(kind, {  # type: ignore[arg-type]
                "seq": outbox.next_seq(), "run_id": run_id, "fence": fence, "type": tag,
                **fields}))

        return emit

    def _lose(self, execution: RunExecution, reason: str) -> None:
        self._holding.discard((execution.run_id, execution.fence))
        execution.lose(reason)

    def _ended(self, execution: RunExecution) -> None:
        key = (execution.run_id, execution.fence)
        self.executions.pop(key, None)
        # A set and a deque, not a dict whose first entry is deleted: finding a dict's first
        # entry passes every entry deleted since it last grew (thousands, at every run's end).
        order = self._finished_order
        if len(order) >= FINISHED_KEPT:
            self._finished.discard(order.popleft())
        order.append(key)
        self._finished.add(key)
        self._holding.discard(key)
        if not self.executions:
            self._idle.set()


def _accepted(lease: AnyGrant) -> m.LeaseAccepted:
    """The answer to a lease (its run id and fence were validated when it arrived)."""
    return m.unvalidated(m.LeaseAccepted, {"type": "lease_accepted", "run_id": lease.run_id,
                                           "fence": lease.fence})


def exit_abandoned() -> NoReturn:
    """Exit now, even while threads still run abandoned ``def`` steps (they would hold it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_ABANDONED)
