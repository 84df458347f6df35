"""How the worker reads its socket: leases and acknowledgements typed by msgspec, no pydantic.

Every run reaches the worker as a ``LeaseGranted``, and every frame of checkpoints it sends
is answered by a ``CheckpointAck``. Validating a grant with pydantic (``protocol.codec.decode``)
cost the worker about 5 µs, a tenth of all it spends on a run of three steps; msgspec decodes
and checks one in under 1 µs.

:class:`Grant` and :class:`Ack` are a second, *read-only* spelling of the models of the same
messages in :mod:`protocol.messages`, which stay the schema: they accept exactly what their
models accept (strict types, ``Count`` bounds, the traceparent's length, no unknown field,
every required one), with the same values (tests/unit/test_worker_wire.py compares them). A
grant's ``memos`` (empty for a fresh run) are validated by pydantic into
:class:`~protocol.messages.StepMemo` models, as the model would.

A frame that holds anything else, or that any check refuses, is decoded again by
:func:`protocol.codec.decode`: other messages come back as models, and a malformed frame is
refused in the words it always was (:class:`~protocol.errors.RemoteProtocolError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct
from pydantic import ConfigDict, TypeAdapter

from protocol import messages as m
from protocol.codec import decode
from protocol.limits import MAX_COUNT
from protocol.tracecontext import MAX_TRACEPARENT

#: ``protocol.messages.Count``.
Count = Annotated[int, Meta(ge=0, le=MAX_COUNT)]
#: ``protocol.messages.TraceParentHeader``.
TraceParent = Annotated[str, Meta(max_length=MAX_TRACEPARENT)]


class _Typed(Struct, forbid_unknown_fields=True, tag_field="type"):
    """A gateway message as the worker reads it (no model is built for it)."""


class Grant(_Typed, gc=False, tag="lease_granted"):
    """:class:`protocol.messages.LeaseGranted`, as the worker reads it.

    Not frozen only so that :func:`decode_from_gateway` can put the validated memos in
    place; nothing changes it after that. Not tracked by the garbage collector: it holds no
    cycle (a run's execution keeps it, not the other way round).
    """

    type: ClassVar[Literal["lease_granted"]] = "lease_granted"
    run_id: str
    fence: Count
    function_id: str
    events: list[bytes]
    memos: dict[str, Any] = {}  # -> dict[str, m.StepMemo], by pydantic (see _MEMOS)
    attempts: dict[str, int] = {}
    deferred: list[str] = []
    attempt: Count = 0
    traceparent: TraceParent | None = None


class Ack(_Typed, gc=False, tag="checkpoint_ack"):
    """:class:`protocol.messages.CheckpointAck`, as the worker reads it."""

    type: ClassVar[Literal["checkpoint_ack"]] = "checkpoint_ack"
    upto: Count


#: A lease in either spelling: decoded here, or a model (built by a test, or decoded by
#: ``protocol.codec.decode`` from a frame that held other messages too).
AnyGrant = m.LeaseGranted | Grant

_parse = msgspec.msgpack.Decoder(list[Grant | Ack]).decode
#: The memos of a grant, validated as ``LeaseGranted.memos`` is (the models are strict).
_MEMOS: TypeAdapter[dict[str, m.StepMemo]] = TypeAdapter(
    dict[str, m.StepMemo], config=ConfigDict(strict=True))


def decode_from_gateway(frame: bytes | str, *, max_size: int
                        ) -> Sequence[m.Message | Grant | Ack]:
    """:func:`protocol.codec.decode` for the worker: grants and acks come back as
    :class:`Grant` and :class:`Ack` (the same acceptance and values), the rest as models.

    Raises:
        RemoteProtocolError: as :func:`protocol.codec.decode`, in the same words.
    """
    if type(frame) is bytes and len(frame) <= max_size:
        try:
            messages = _parse(frame)
            for message in messages:
                if type(message) is Grant and message.memos:
                    message.memos = _MEMOS.validate_python(message.memos)
        except Exception:  # msgspec refused it (or pydantic the memos): see below
            pass  # not only grants and acks, or refused: decode says which and why
        else:
            return messages
    return decode(frame, max_size=max_size)
