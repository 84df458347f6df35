"""The worker's spans: one per ``step.run`` attempt, a child of its run's span.

Imported only when the worker traces (``--traces``, or ``Worker(tracer_provider=...)``); a
run then holds a :class:`RunTracing` and every other run holds None, which costs one
``is None`` test per step. Replayed steps run no code and make no span.

The run's span itself comes from the gateway (its id is derived from the run id, see
:mod:`protocol.tracecontext`), so spans made on different workers, before and after a
crash, all hang under one run span in one trace. While a step's code runs its span is the
current one, so the user's own spans (and instrumented HTTP clients, ``app.send``...) nest
under it; the function body between steps sees the run's span as current.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from protocol.limits import VERSION
from protocol.tracecontext import TraceParent, parse, run_context


class WorkerTracing:
    """Spans for this worker's runs, made with ``provider`` (the global one by default)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self.provider = provider or trace.get_tracer_provider()
        self.tracer = self.provider.get_tracer("tether.worker", VERSION)

    def run(self, run_id: str, function_id: str, traceparent: str | None) -> RunTracing:
        """The tracing of one lease: under the gateway's run span, or (from a gateway that
        does not trace) under the span the gateway would derive for the run."""
        found = parse(traceparent) or run_context(run_id, None)
        return RunTracing(self.tracer, found, run_id, function_id)


class RunTracing:
    """One lease's spans: its run's context, and a span per step attempt."""

    def __init__(self, tracer: trace.Tracer, run: TraceParent, run_id: str,
                 function_id: str) -> None:
        self.tracer = tracer
        self.traceparent = run.header()
        self.run_id = run_id
        self.function_id = function_id
        span = NonRecordingSpan(SpanContext(run.trace_id, run.span_id, is_remote=True,
                                            trace_flags=TraceFlags(run.flags)))
        self.context = trace.set_span_in_context(span, otel_context.Context())

    def enter_body(self) -> object:
        """Make the run's span current for the function body; returns the token to undo."""
        return otel_context.attach(self.context)

    @staticmethod
    def leave(token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]

    def step(self, step_id: str, attempt: int) -> StepSpan:
        """Start step ``step_id``'s span, current until :meth:`StepSpan.end`."""
        span = self.tracer.start_span(
            f"step.run {step_id}", context=self.context,
            attributes={"tether.run_id": self.run_id, "tether.function_id": self.function_id,
                        "tether.step_id": step_id, "tether.step.kind": "run",
                        "tether.attempt": attempt})
        return StepSpan(span, otel_context.attach(trace.set_span_in_context(span)))


class StepSpan:
    """A running step attempt's span; :meth:`end` it where it was started."""

    def __init__(self, span: trace.Span, token: Any) -> None:
        self.span = span
        self._token = token

    def end(self, exc: BaseException | None, *, abandoned: bool = False) -> None:
        """The attempt is over: raised ``exc`` (an error span), or the lease was lost."""
        otel_context.detach(self._token)
        if abandoned:
            self.span.set_attribute("tether.abandoned", True)
        elif exc is not None:
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:1000]))
        self.span.end()
