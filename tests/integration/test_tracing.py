"""Traces (OpenTelemetry): an in-process gateway and worker sharing an in-memory exporter.

Everything is observed through the public surface: events posted over HTTP (with or without a
``traceparent`` header), ``app.send``, the run API, and the spans the SDK's in-memory
exporter received.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from cmdline.tracing import tracer_provider
from gateway.app import Gateway
from gateway.config import Settings
from protocol.tracecontext import run_span_id, step_span_id
from tests.helpers.inproc import Harness
from tests.helpers.waiting import eventually
from worker import App, Event, TriggerEvent

SENDER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SENDER_SPAN = 0x00F067AA0BA902B7
SENDER = f"00-{SENDER_TRACE:032x}-{SENDER_SPAN:016x}-01"


class Traced:
    """A gateway and its workers tracing into one in-memory exporter."""

    def __init__(self, harness: Harness, exporter: InMemorySpanExporter,
                 provider: TracerProvider) -> None:
        self.harness, self.exporter, self.provider = harness, exporter, provider

    async def start_worker(self, apps: Sequence[App]) -> None:
        await self.harness.start_worker(apps, tracer_provider=self.provider)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = list(self.exporter.get_finished_spans())
        return [s for s in found if name is None or s.name == name]

    async def wait_spans(self, name: str, count: int = 1) -> list[ReadableSpan]:
        async def enough() -> list[ReadableSpan] | None:
            spans = self.spans(name)
            return spans if len(spans) >= count else None
        found: list[ReadableSpan] = await eventually(
            enough, what=f"{count} span(s) named {name!r} in {self.names()}")
        return found

    def names(self) -> list[str]:
        return sorted(s.name for s in self.spans())


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return tracer_provider("none", service_name="tether-test", span_exporter=exporter), exporter


async def _gateway(tmp_path: Path, provider: TracerProvider | None,
                   db: str | None = None, **settings: Any) -> Gateway:
    gateway = Gateway(Settings(host="127.0.0.1", port=0, connect_port=0, dev=True,
                               db=db or f"sqlite:///{tmp_path / 'tether.db'}",
                               retry_base=0.01, go_away_grace=0.5, **settings),
                      tracer_provider=provider)
    await gateway.start()
    return gateway


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[Traced]:
    provider, exporter = _provider()
    gateway = await _gateway(tmp_path, provider, trace_url="http://traces/{trace_id}")
    harness = Harness(gateway)
    yield Traced(harness, exporter, provider)
    await harness.close()
    await gateway.stop()


def _app(user_tracer: trace.Tracer) -> App:
    """A parent run with a step that fails once, a user span, a sleep and a child run."""
    app = App("t")
    counts: dict[str, int] = {}

    @app.function(id="child", trigger=TriggerEvent("t/child"))
    async def child(ctx):
        return await ctx.step.run("double", lambda: ctx.event.data["n"] * 2)

    @app.function(id="parent", trigger=TriggerEvent("t/parent"), retries=2)
    async def parent(ctx):
        async def flaky() -> int:
            counts["flaky"] = counts.get("flaky", 0) + 1
            with user_tracer.start_as_current_span("user-work"):
                if counts["flaky"] == 1:
                    raise RuntimeError("transient")
            return 21

        n = await ctx.step.run("flaky", flaky)
        await ctx.step.sleep("nap", 0.05)
        return await ctx.step.invoke("call-child", function=child, data={"n": n})

    return app


def _post(harness: Harness, body: Any, headers: dict[str, str] | None = None) -> Any:
    return harness.http.post("/e/dev", json=body, headers=headers or {})


def _by_id(spans: Sequence[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans}


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_an_event_with_a_traceparent_gives_one_trace_of_runs_steps_and_children(traced):
    # The user's code makes spans with its own tracer; they nest by context, whatever the
    # provider (the worker's command line makes its provider the global one).
    app = _app(traced.provider.get_tracer("user-code"))
    await traced.start_worker([app])
    response = await _post(traced.harness, {"name": "t/parent", "data": {}},
                           {"traceparent": SENDER})
    assert response.status_code == 200, response.text
    (event_id,) = response.json()["ids"]
    run = await traced.harness.run_of(event_id)
    done = await traced.harness.wait_status(run["id"], "Completed", "Failed")
    assert done["status"] == "Completed" and done["output"] == 42, done
    await traced.wait_spans("run t/child")
    (run_span,) = await traced.wait_spans("run t/parent")

    spans = traced.spans()
    assert {s.context.trace_id for s in spans} == {SENDER_TRACE}, traced.names()
    (intake,) = traced.spans("POST /e/{event_key}")
    assert _parent_id(intake) == SENDER_SPAN and intake.parent is not None
    assert intake.parent.is_remote
    # The run's span: a child of the intake span, with the id every process derives.
    assert run_span.context.span_id == run_span_id(run["id"])
    assert _parent_id(run_span) == intake.context.span_id
    assert run_span.attributes is not None
    assert run_span.attributes["tether.status"] == "Completed"
    # Queue delay: its own span per lease (the sleep and the child made more leases).
    queues = [s for s in traced.spans("queue")
              if s.attributes and s.attributes["tether.run_id"] == run["id"]]
    assert len(queues) >= 2 and all(_parent_id(q) == run_span.context.span_id for q in queues)
    # Each attempt of the step: a span under the run's, the first one failed.
    attempts = sorted(traced.spans("step.run flaky"),
                      key=lambda s: s.attributes["tether.attempt"] if s.attributes else 0)
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.UNSET]
    assert all(_parent_id(s) == run_span.context.span_id for s in attempts)
    assert attempts[0].events and attempts[0].events[0].name == "exception"
    # The user's own spans nest under the step attempt that ran them.
    user = sorted(traced.spans("user-work"), key=lambda s: s.start_time or 0)
    assert [_parent_id(u) for u in user] == [a.context.span_id for a in attempts]
    # The sleep, as the gateway recorded it.
    (nap,) = traced.spans("step.sleep nap")
    assert _parent_id(nap) == run_span.context.span_id
    assert nap.context.span_id == step_span_id(run["id"], "nap")
    # The child run: under the invoke step's span, and linked to its parent run.
    (invoke,) = traced.spans("step.invoke call-child")
    assert _parent_id(invoke) == run_span.context.span_id
    (child,) = traced.spans("run t/child")
    assert _parent_id(child) == invoke.context.span_id
    assert [link.context.span_id for link in child.links] == [run_span.context.span_id]
    (double,) = traced.spans("step.run double")
    assert _parent_id(double) == child.context.span_id
    # Replayed steps make no span: "flaky" ran twice (two attempts), however many leases.
    assert len(attempts) == 2
    # The API links the run to its trace.
    links = await traced.harness.run(run["id"])
    assert links["trace_id"] == f"{SENDER_TRACE:032x}"
    assert links["trace_url"] == f"http://traces/{SENDER_TRACE:032x}"
    page = await traced.harness.http.get(f"/runs/{run['id']}")  # the dashboard's run page
    assert f'href="http://traces/{SENDER_TRACE:032x}"' in page.text, page.text


@pytest.mark.parametrize("header", [
    "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    f"00-{SENDER_TRACE:032x}-0000000000000000-01",
    f"ff-{SENDER_TRACE:032x}-{SENDER_SPAN:016x}-01",
    f"00-{SENDER_TRACE:032X}-{SENDER_SPAN:016x}-01",
    f"00-{SENDER_TRACE:032x}-{SENDER_SPAN:016x}-01-x",
])
async def test_a_malformed_traceparent_is_ignored_and_a_new_trace_starts(traced, header):
    app = App("t")

    @app.function(id="f", trigger=TriggerEvent("t/f"))
    async def f(ctx):
        return await ctx.step.run("one", lambda: 1)

    await traced.start_worker([app])
    response = await _post(traced.harness, {"name": "t/f"}, {"traceparent": header})
    assert response.status_code == 200, response.text
    run = await traced.harness.run_of(response.json()["ids"][0])
    await traced.harness.wait_status(run["id"], "Completed")
    (run_span,) = await traced.wait_spans("run t/f")
    (intake,) = traced.spans("POST /e/{event_key}")
    assert intake.parent is None  # a root: the header was not understood
    assert run_span.context.trace_id == intake.context.trace_id != SENDER_TRACE


async def test_app_send_and_send_event_carry_the_trace_on(traced):
    app = App("t", api_url=str(traced.harness.http.base_url))

    @app.function(id="first", trigger=TriggerEvent("t/first"))
    async def first(ctx):
        await ctx.step.send_event("fan-out", Event("t/second", {}))
        return "sent"

    @app.function(id="second", trigger=TriggerEvent("t/second"))
    async def second(ctx):
        return await ctx.step.run("work", lambda: "done")

    await traced.start_worker([app])
    with traced.provider.get_tracer("sender").start_as_current_span("checkout") as sender:
        (event_id,) = await app.send(Event("t/first", {}))
    run = await traced.harness.run_of(event_id)
    await traced.harness.wait_status(run["id"], "Completed")
    (second_span,) = await traced.wait_spans("run t/second")
    (first_span,) = await traced.wait_spans("run t/first")
    (sent,) = await traced.wait_spans("step.send_event fan-out")

    trace_id = sender.get_span_context().trace_id
    (intake,) = [s for s in traced.spans("POST /e/{event_key}")
                 if _parent_id(s) == sender.get_span_context().span_id]
    assert _parent_id(first_span) == intake.context.span_id
    assert _parent_id(sent) == first_span.context.span_id
    assert _parent_id(second_span) == sent.context.span_id
    assert {first_span.context.trace_id, second_span.context.trace_id} == {trace_id}


async def test_without_a_provider_nothing_is_traced_and_tracing_code_never_runs(tmp_path):
    """Tracing off: no trace link, and (measured) no call into OpenTelemetry or any tracing
    code on the way from the event to the last checkpoint, so no span either."""
    gateway = await _gateway(tmp_path, None)
    harness = Harness(gateway)
    try:
        app = App("t")

        @app.function(id="f", trigger=TriggerEvent("t/f"))
        async def f(ctx):
            a = await ctx.step.run("a", lambda: 1)
            return a + await ctx.step.run("b", lambda: 2)

        await harness.start_worker([app])
        called: set[str] = set()

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                name = frame.f_code.co_filename
                if "opentelemetry" in name or name.endswith(("/tracing.py", "tracecontext.py")):
                    called.add(f"{name}:{frame.f_code.co_name}")

        sys.setprofile(profile)
        threading_profile(profile)
        try:
            response = await _post(harness, {"name": "t/f"}, {"traceparent": SENDER})
            run = await harness.run_of(response.json()["ids"][0])
            done = await harness.wait_status(run["id"], "Completed")
        finally:
            sys.setprofile(None)
            threading_profile(None)
        assert done["output"] == 3
        # Only the intake's check of the header before it is stored (so that a trace can
        # continue once tracing is on): nothing on the lease or checkpoint path.
        intake = {f"{_tracecontext_file()}:{fn}" for fn in ("clean", "parse", "header")}
        assert called <= intake, called
        assert "trace_id" not in await harness.run(run["id"])
    finally:
        await harness.close()
        await gateway.stop()


def threading_profile(fn: Any) -> None:
    import threading

    threading.setprofile(fn)


def _tracecontext_file() -> str:
    import protocol.tracecontext

    return protocol.tracecontext.__file__


async def test_postgres_keeps_the_trace_parent_too(tmp_path, pg_url):
    from tests.helpers.postgres import truncate

    url = pg_url
    await truncate(url)
    provider, exporter = _provider()
    gateway = await _gateway(tmp_path, provider, db=url)
    harness = Harness(gateway)
    try:
        app = App("t")

        @app.function(id="f", trigger=TriggerEvent("t/f"))
        async def f(ctx):
            return await ctx.step.run("one", lambda: 1)

        await harness.start_worker([app], tracer_provider=provider)
        response = await _post(harness, {"name": "t/f"}, {"traceparent": SENDER})
        run = await harness.run_of(response.json()["ids"][0])
        await harness.wait_status(run["id"], "Completed")

        async def run_span() -> list[ReadableSpan]:
            return [s for s in exporter.get_finished_spans() if s.name == "run t/f"]
        (span,) = await eventually(run_span, what="the run's span")
        (step,) = [s for s in exporter.get_finished_spans() if s.name == "step.run one"]
        assert span.context.trace_id == step.context.trace_id == SENDER_TRACE
        assert _parent_id(step) == span.context.span_id == run_span_id(run["id"])
    finally:
        await harness.close()
        await gateway.stop()


async def test_a_run_resumed_by_a_restarted_gateway_continues_its_trace(tmp_path):
    """The trace context is durable: a sleeping run, a gateway stopped and started again on
    its database (with a new provider, as a new process would have), the same trace."""
    first, first_spans = _provider()
    gateway = await _gateway(tmp_path, first)
    harness = Harness(gateway)
    app = App("t")

    @app.function(id="f", trigger=TriggerEvent("t/f"))
    async def f(ctx):
        await ctx.step.run("before", lambda: 1)
        await ctx.step.sleep("nap", 0.3)
        return await ctx.step.run("after", lambda: 2)

    await harness.start_worker([app], tracer_provider=first)
    response = await _post(harness, {"name": "t/f"}, {"traceparent": SENDER})
    run = await harness.run_of(response.json()["ids"][0])
    await harness.wait_status(run["id"], "Sleeping")
    await harness.close()
    await gateway.stop()

    second, second_spans = _provider()
    gateway = await _gateway(tmp_path, second)
    harness = Harness(gateway)
    try:
        await harness.start_worker([app], tracer_provider=second)
        await harness.wait_status(run["id"], "Completed")

        async def run_span() -> list[ReadableSpan]:
            return [s for s in second_spans.get_finished_spans() if s.name == "run t/f"]
        (span,) = await eventually(run_span, what="the run's span from the second gateway")
    finally:
        await harness.close()
        await gateway.stop()
    (before,) = [s for s in first_spans.get_finished_spans() if s.name == "step.run before"]
    (after,) = [s for s in second_spans.get_finished_spans() if s.name == "step.run after"]
    assert span.context.trace_id == before.context.trace_id == after.context.trace_id \
        == SENDER_TRACE
    assert _parent_id(before) == _parent_id(after) == span.context.span_id


async def test_a_def_functions_steps_nest_user_spans_too(traced):
    """A plain ``def`` function runs on a thread: its step spans and the user's spans in
    them nest the same way, and code between steps sees the run's span as current."""
    app = App("t")
    user = traced.provider.get_tracer("user-code")

    def lookup() -> int:
        with user.start_as_current_span("db-query"):
            return 7

    @app.function(id="sync", trigger=TriggerEvent("t/sync"))
    def sync(ctx):
        with user.start_as_current_span("between-steps"):
            pass
        return ctx.step.run("lookup", lookup)

    await traced.start_worker([app])
    response = await _post(traced.harness, {"name": "t/sync"}, {"traceparent": SENDER})
    run = await traced.harness.run_of(response.json()["ids"][0])
    assert (await traced.harness.wait_status(run["id"], "Completed"))["output"] == 7
    (run_span,) = await traced.wait_spans("run t/sync")
    (step,) = traced.spans("step.run lookup")
    (query,) = traced.spans("db-query")
    (between,) = traced.spans("between-steps")
    assert _parent_id(step) == _parent_id(between) == run_span.context.span_id
    assert _parent_id(query) == step.context.span_id
    assert {s.context.trace_id for s in (run_span, step, query, between)} == {SENDER_TRACE}
