"""The gateway's spans: event intake, queue delay, each run, and the steps only it completes.

Imported only when tracing is on (``--traces``, the extra ``tether[otel]``): the engine holds
``None`` otherwise and pays one ``is None`` test per lease and per ended run.

The span tree of a run (ids from :mod:`protocol.tracecontext`, so every process agrees)::

    sender's span (traceparent header)            [app.send, curl, another service]
      POST /e                                     intake: the events' stored traceparent
        run shop/checkout                         exported when the run ends
          queue                                   one per lease: ready -> leased
          step.run charge (attempt 0, error)      by the worker; user spans nest below
          step.run charge (attempt 1)
          step.sleep cool-off                     by the gateway, from the step's record
          step.invoke ship                        the child run's span is its child...
            run shop/ship                         ...and links back to the parent run

A run span cannot stay open in memory (a run may sleep for a week and end on another
gateway), so the gateway that ends the run reads its record and exports the span then,
with the derived id its children already point to. That read happens off the write path,
in one background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from gateway.store.base import Lease, RunEnded, RunRecord, Store
from protocol.limits import VERSION
from protocol.tracecontext import (
    TraceParent,
    parse,
    run_context,
    run_span_id,
    step_span_id,
)

log = structlog.get_logger("tether.tracing")

#: Steps the gateway completes, so it exports their spans (the worker exports ``run``'s).
_GATEWAY_STEPS = frozenset({"sleep", "wait", "invoke", "send_event"})
_STEP_NAMES = {"wait": "wait_for_event"}

#: Ended runs waiting for their spans; beyond this many the oldest are dropped (logged).
MAX_PENDING = 10_000

#: (trace id, span id) the next span must have: a run's or a gateway step's derived ids.
_FORCED: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "tether_forced_span", default=None)


class DerivedIds(IdGenerator):
    """The provider's id generator, except for spans whose ids Tether derives."""

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner

    def generate_span_id(self) -> int:
        forced = _FORCED.get()
        return forced[1] if forced is not None else self.inner.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _FORCED.get()
        return forced[0] if forced is not None else self.inner.generate_trace_id()


def remote(parent: TraceParent | None) -> Context:
    """An OpenTelemetry context whose current span is ``parent`` (from another process);
    an empty one (a new trace) for None."""
    if parent is None:
        return Context()
    span = NonRecordingSpan(SpanContext(parent.trace_id, parent.span_id, is_remote=True,
                                        trace_flags=TraceFlags(parent.flags)))
    return trace.set_span_in_context(span, Context())


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class GatewayTracing:
    """Makes the gateway's spans with ``provider`` (its id generator is wrapped once).

    Args:
        provider: an OpenTelemetry SDK tracer provider.
        store: where ended runs are read back for their spans.
        trace_url: a link template for the dashboard and the API, ``{trace_id}`` in it.
    """

    def __init__(self, provider: TracerProvider, store: Store, *,
                 trace_url: str | None = None, owned: bool = False) -> None:
        if not isinstance(provider.id_generator, DerivedIds):
            # The SDK types the attribute as its default generator; any IdGenerator works.
            provider.id_generator = DerivedIds(  # type: ignore[assignment]
                provider.id_generator or RandomIdGenerator())
        self.provider = provider
        self.tracer = provider.get_tracer("tether.gateway", VERSION)
        self.store = store
        self.trace_url = trace_url
        self._owned = owned  # built from --traces: flushed and shut down with the gateway
        self._ended: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0

    # --- intake -----------------------------------------------------------------------

    @contextlib.contextmanager
    def intake(self, header: str | None, *, route: str, events: int) -> Iterator[str]:
        """A server span for one request that stores events: yields the ``traceparent`` to
        store with them. It continues the sender's trace when ``header`` is valid (W3C: a
        malformed one is ignored, and a new trace starts)."""
        span = self.tracer.start_span(
            f"POST {route}", context=remote(parse(header)), kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": route,
                        "tether.events": events})
        context = span.get_span_context()
        try:
            yield TraceParent(context.trace_id, context.span_id,
                              int(context.trace_flags)).header()
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            span.end()

    # --- leases -----------------------------------------------------------------------

    def leased(self, lease: Lease, *, now: float, instance_id: str) -> str:
        """Export the lease's queue span; return the run span's ``traceparent`` for it."""
        run = run_context(lease.run_id, lease.trace_parent)
        ready = lease.available_at if lease.available_at is not None else now
        span = self.tracer.start_span(
            "queue", context=remote(run), start_time=_ns(min(ready, now)),
            attributes={"tether.run_id": lease.run_id, "tether.function_id": lease.function_id,
                        "tether.fence": lease.fence, "tether.first_lease": lease.first,
                        "tether.worker.instance_id": instance_id})
        span.end(end_time=_ns(now))
        return run.header()

    # --- run endings ------------------------------------------------------------------

    def ended(self, runs: Sequence[RunEnded]) -> None:
        """Runs reached a final status: export their spans soon, off the write path."""
        for ended in runs:
            if self._ended.qsize() >= MAX_PENDING:
                self._dropped += 1
                continue
            self._ended.put_nowait(ended.run_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._export_ended(), name="tether-tracing")

    async def close(self) -> None:
        """Export what is pending, then flush (and shut down a provider we built)."""
        if self._task is not None:
            await self._drain()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._owned:
            await asyncio.to_thread(self.provider.shutdown)

    async def _drain(self) -> None:
        batch: list[str] = []
        while not self._ended.empty():
            batch.append(self._ended.get_nowait())
        if batch:
            await self._export(batch)

    async def _export_ended(self) -> None:
        while True:
            batch = [await self._ended.get()]
            while not self._ended.empty() and len(batch) < 500:
                batch.append(self._ended.get_nowait())
            try:
                await self._export(batch)
            except Exception as exc:  # the store may be briefly away: spans are best effort
                log.warning("run_spans_lost", runs=len(batch), error=str(exc))
            if self._dropped:
                log.warning("run_spans_dropped", runs=self._dropped,
                            hint=f"more than {MAX_PENDING} ended runs waited for export")
                self._dropped = 0

    async def _export(self, run_ids: list[str]) -> None:
        parents = await self.store.trace_parents(run_ids)
        for run_id in run_ids:
            record = await self.store.get_run(run_id)
            if record is not None:
                self.export_run(record, parents.get(run_id))

    def export_run(self, record: RunRecord, parent: str | None) -> None:
        """The run's span (with its derived id) and the spans of its gateway steps."""
        run = run_context(record.id, parent)
        ended = record.ended_at if record.ended_at is not None else record.queued_at
        attributes: dict[str, Any] = {
            "tether.run_id": record.id, "tether.function_id": record.function_id,
            "tether.status": record.status, "tether.attempt": record.attempt,
            "tether.event_ids": record.event_ids[:20],
        }
        links = []
        if record.parent_run_id is not None:
            attributes["tether.parent_run_id"] = record.parent_run_id
            links.append(Link(SpanContext(run.trace_id, run_span_id(record.parent_run_id),
                                          is_remote=True, trace_flags=TraceFlags(run.flags)),
                              {"tether.link": "parent_run"}))
        span = self._forced(run, f"run {record.function_id}", remote(parse(parent)),
                            start=record.queued_at, attributes=attributes, links=links)
        if record.status == "Failed" and record.error is not None:
            span.set_status(Status(StatusCode.ERROR,
                                   f"{record.error.name}: {record.error.message}"[:1000]))
        for step in record.steps:
            if step.kind not in _GATEWAY_STEPS or step.started_at is None:
                continue
            kind = _STEP_NAMES.get(step.kind, step.kind)
            step_span = self._forced(
                run.child(step_span_id(record.id, step.id)), f"step.{kind} {step.id}",
                remote(run), start=step.started_at,
                attributes={"tether.run_id": record.id, "tether.step_id": step.id,
                            "tether.step.kind": step.kind, "tether.step.status": step.status})
            if step.error is not None:
                step_span.set_status(Status(StatusCode.ERROR,
                                            f"{step.error.name}: {step.error.message}"[:1000]))
            step_span.end(end_time=_ns(max(step.ended_at or ended, step.started_at)))
        span.end(end_time=_ns(max(ended, record.queued_at)))

    def _forced(self, ids: TraceParent, name: str, context: Context, *, start: float,
                attributes: dict[str, Any], links: Sequence[Link] = ()) -> trace.Span:
        token = _FORCED.set((ids.trace_id, ids.span_id))
        try:
            return self.tracer.start_span(name, context=context, start_time=_ns(start),
                                          attributes=attributes, links=links)
        finally:
            _FORCED.reset(token)

    # --- links for people ---------------------------------------------------------------

    async def run_links(self, run_id: str) -> dict[str, str]:
        """``trace_id`` (and ``trace_url``) of a run, for the API and the dashboard."""
        parents = await self.store.trace_parents([run_id])
        trace_id = f"{run_context(run_id, parents.get(run_id)).trace_id:032x}"
        links = {"trace_id": trace_id}
        if self.trace_url:
            links["trace_url"] = self.trace_url.replace("{trace_id}", trace_id)
        return links

