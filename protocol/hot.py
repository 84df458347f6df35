"""The worker's per-run messages as msgspec Structs: how the gateway reads its busiest socket.

Every run sends the gateway a ``LeaseAccepted``, its ``StepCompleted`` checkpoints and a
``RunCompleted``, and each worker a ``Heartbeat`` now and then. Validating them with pydantic
cost the gateway about 1.3 µs each, most of what it spent on a worker's frames; msgspec
decodes and checks them in one pass, in about 0.2 µs (``python -m bench frames``).

These classes are a second, *read-only* spelling of the pydantic models of the same names in
:mod:`protocol.messages`, which stay the public schema: workers build those, and every other
message is decoded into those. A Struct here accepts exactly what its model accepts, with
the same values (tests/unit/test_hot_messages.py compares them with hypothesis):

- strict types: no bool for an int, no float for an int, no str for bytes (msgspec's default);
- ``Count`` fields within ``0..MAX_COUNT``, floats finite (pydantic's ``allow_inf_nan=False``:
  NaN and infinities fail the bounds below), lengths of ``warnings`` and of each warning;
- no NUL in a ``Name`` field (pydantic's pattern; checked in ``__post_init__``, which costs a
  tenth of what msgspec's regex does);
- no unknown field, every required field, and the ``type`` tag of the class.

A frame whose messages are not all of these, or that any check refuses, is decoded again by
:func:`protocol.codec.decode` (pydantic): so a refusal is worded as it always was. Limits come
from :mod:`protocol.limits`, as the models' do.
"""

from __future__ import annotations

import sys
from typing import Annotated, ClassVar, Literal

from msgspec import Meta, Struct

from protocol import messages as m
from protocol.limits import MAX_COUNT, MAX_RUN_WARNING, MAX_RUN_WARNINGS

#: ``protocol.messages.Count``.
Count = Annotated[int, Meta(ge=0, le=MAX_COUNT)]
#: A finite float: NaN compares false with both bounds, infinities pass neither.
Finite = Annotated[float, Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
#: ``protocol.messages.RunWarning``.
RunWarning = Annotated[str, Meta(max_length=MAX_RUN_WARNING)]


class _Hot(Struct, frozen=True, forbid_unknown_fields=True, gc=False, tag_field="type"):
    """Frozen like the models; no cycles, so the garbage collector need not track them."""


class StepCompleted(_Hot, frozen=True, tag="step_completed"):
    """:class:`protocol.messages.StepCompleted`, as the gateway reads it."""

    type: ClassVar[Literal["step_completed"]] = "step_completed"
    seq: Count
    run_id: str
    fence: Count
    step_id: str
    attempt: Count
    output: bytes
    started_at: Finite
    ended_at: Finite

    def __post_init__(self) -> None:
        if "\x00" in self.run_id or "\x00" in self.step_id:
            raise ValueError("a name holds a NUL character")


class RunCompleted(_Hot, frozen=True, tag="run_completed"):
    """:class:`protocol.messages.RunCompleted`, as the gateway reads it."""

    type: ClassVar[Literal["run_completed"]] = "run_completed"
    seq: Count
    run_id: str
    fence: Count
    output: bytes
    warnings: Annotated[list[RunWarning], Meta(max_length=MAX_RUN_WARNINGS)] = []

    def __post_init__(self) -> None:
        if "\x00" in self.run_id:
            raise ValueError("a name holds a NUL character")


class LeaseAccepted(_Hot, frozen=True, tag="lease_accepted"):
    """:class:`protocol.messages.LeaseAccepted`, as the gateway reads it."""

    type: ClassVar[Literal["lease_accepted"]] = "lease_accepted"
    run_id: str
    fence: Count


class Heartbeat(_Hot, frozen=True, tag="heartbeat"):
    """:class:`protocol.messages.Heartbeat`, as the gateway reads it."""

    type: ClassVar[Literal["heartbeat"]] = "heartbeat"
    in_flight: Count = 0


#: The checkpoints among them, and every one (what a typed frame may hold).
Checkpoint = StepCompleted | RunCompleted
HotMessage = StepCompleted | RunCompleted | LeaseAccepted | Heartbeat
CHECKPOINT_TYPES: tuple[type[StepCompleted], type[RunCompleted]] = (StepCompleted, RunCompleted)

#: A checkpoint as the gateway holds it: a model (built, or decoded from a cold frame) or a
#: Struct. Consumers test a kind with the pair below: ``isinstance(msg, hot.STEP_COMPLETED)``.
AnyCheckpoint = m.Checkpoint | Checkpoint

#: Each hot kind as either spelling, the Struct first (the common case under load).
STEP_COMPLETED = (StepCompleted, m.StepCompleted)
RUN_COMPLETED = (RunCompleted, m.RunCompleted)
LEASE_ACCEPTED = (LeaseAccepted, m.LeaseAccepted)
HEARTBEAT = (Heartbeat, m.Heartbeat)
#: Every checkpoint, in either spelling.
ANY_CHECKPOINT: tuple[type[AnyCheckpoint], ...] = (*CHECKPOINT_TYPES, *m.CHECKPOINT_TYPES)
