"""W3C trace context (``traceparent``) as plain strings, and the ids of a run's spans.

This room imports no OpenTelemetry: the gateway stores a sender's ``traceparent`` and the
worker hands one on (``step.invoke``, ``step.send_event``) whether or not tracing is
installed, so a trace continues once it is turned on.

A run lives longer than any process: it may sleep for days and be resumed by another worker
or another gateway. So its span cannot be held open in memory. Its ids are *derived* from
the run id instead: every process computes the same run span id (and, for a run nobody's
trace started, the same trace id) and parents its own spans to it; the gateway that ends the
run exports the run span itself with that id. Steps that only the gateway completes
(sleeps, waits, child runs, sent events) get ids derived from the run and step ids the same
way, so a child run started by ``step.invoke`` nests under its invoke step.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

#: version-traceid-parentid-flags, lowercase hex (W3C Trace Context, level 1 and 2).
_TRACEPARENT = re.compile(
    r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?$")

#: Longest ``traceparent`` we read or store: version 00 is 55 characters; later versions
#: may append fields, but nothing needs more than this.
MAX_TRACEPARENT = 512

SAMPLED = 0x01


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A span's place in a trace: what a ``traceparent`` header carries."""

    trace_id: int
    span_id: int
    flags: int = SAMPLED

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def header(self) -> str:
        """The version-00 ``traceparent`` header for this span."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"

    def child(self, span_id: int) -> TraceParent:
        """Another span of the same trace (same sampling decision)."""
        return TraceParent(self.trace_id, span_id, self.flags)


def parse(header: str | None) -> TraceParent | None:
    """The trace context of a ``traceparent`` header, or None if it is absent or malformed.

    W3C says a receiver that cannot parse the header ignores it and starts a new trace,
    so malformed input is never an error. Version ``ff`` and all-zero ids are invalid; a
    version above 00 may carry more fields after the four known ones.
    """
    if header is None or len(header) > MAX_TRACEPARENT:
        return None
    found = _TRACEPARENT.match(header.strip())
    if found is None:
        return None
    version, trace, span, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return TraceParent(trace_id, span_id, int(flags, 16))


def clean(header: str | None) -> str | None:
    """``header`` in canonical version-00 form if it is valid, else None (for storing)."""
    parsed = parse(header)
    return parsed.header() if parsed is not None else None


def _derive(size: int, *parts: str) -> int:
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=size).digest()
    return int.from_bytes(digest, "big") or 1  # zero is no id (W3C)


def run_span_id(run_id: str) -> int:
    """The span id of a run's span, the same in every process."""
    return _derive(8, "tether.run", run_id)


def step_span_id(run_id: str, step_id: str) -> int:
    """The span id of a step the gateway completes (sleep, wait, invoke, send_event)."""
    return _derive(8, "tether.step", run_id, step_id)


def run_context(run_id: str, parent: str | None) -> TraceParent:
    """The run's own span context: in ``parent``'s trace if there is one, else in a trace
    whose id derives from the run id (so every process agrees on it)."""
    found = parse(parent)
    if found is None:
        return TraceParent(_derive(16, "tether.trace", run_id), run_span_id(run_id))
    return found.child(run_span_id(run_id))


def step_traceparent(run: str | None, run_id: str, step_id: str) -> str | None:
    """The ``traceparent`` of a gateway-completed step of the run whose span is ``run``."""
    found = parse(run)
    return None if found is None else found.child(step_span_id(run_id, step_id)).header()
