"""W3C ``traceparent`` parsing and the derived span ids of runs (protocol.tracecontext)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.tracecontext import (
    TraceParent,
    clean,
    parse,
    run_context,
    run_span_id,
    step_span_id,
    step_traceparent,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_a_valid_header_parses_and_prints_back_the_same() -> None:
    found = parse(VALID)
    assert found == TraceParent(int(TRACE, 16), int(SPAN, 16), 1)
    assert found is not None and found.sampled and found.header() == VALID
    assert parse(f"00-{TRACE}-{SPAN}-00") == TraceParent(int(TRACE, 16), int(SPAN, 16), 0)


@pytest.mark.parametrize("header", [
    None, "", "garbage", VALID.upper(), f"00-{TRACE}-{SPAN}", f"00-{TRACE[:-1]}-{SPAN}-01",
    f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", f"ff-{TRACE}-{SPAN}-01",
    f"00-{TRACE}-{SPAN}-01-extra", f"0-{TRACE}-{SPAN}-01", f"00-{TRACE}-{SPAN}-1",
    f"00_{TRACE}_{SPAN}_01", "00-" + "g" * 32 + f"-{SPAN}-01", VALID + "x" * 600,
])
def test_a_malformed_header_is_ignored_not_an_error(header: str | None) -> None:
    assert parse(header) is None
    assert clean(header) is None


def test_a_later_version_may_carry_more_fields_and_is_read_as_version_00() -> None:
    assert clean(f"01-{TRACE}-{SPAN}-01-what-comes-next") == VALID
    assert clean(f"  {VALID} ") == VALID  # optional whitespace around a header value


@given(st.text(max_size=80))
def test_any_text_parses_or_is_ignored_never_raises(text: str) -> None:
    found = parse(text)
    assert found is None or parse(found.header()) == found


def test_a_runs_ids_are_the_same_in_every_process_and_differ_between_runs() -> None:
    assert run_span_id("run-1") == run_span_id("run-1") != run_span_id("run-2")
    assert step_span_id("run-1", "a") != step_span_id("run-1", "b") != run_span_id("run-1")
    # A run nobody's trace started gets a trace of its own, the same wherever computed.
    alone = run_context("run-1", None)
    assert alone == run_context("run-1", "not a header")
    assert alone.trace_id != 0 and alone.span_id == run_span_id("run-1") and alone.sampled
    # A run in a sender's trace keeps the trace and the sampling decision.
    continued = run_context("run-1", f"00-{TRACE}-{SPAN}-00")
    assert continued == TraceParent(int(TRACE, 16), run_span_id("run-1"), 0)


def test_a_gateway_step_continues_its_runs_trace() -> None:
    run = run_context("run-1", VALID).header()
    step = parse(step_traceparent(run, "run-1", "call"))
    assert step == TraceParent(int(TRACE, 16), step_span_id("run-1", "call"), 1)
    assert step_traceparent(None, "run-1", "call") is None
