"""The two shortcuts of the hot messages, against pydantic with hypothesis.

``protocol.codec.pack`` sends a message's ``__dict__`` as it is when it holds no nested model,
and ``protocol.messages.unvalidated`` builds the worker's hot messages without validating
them. Both must change nothing that pydantic would do: the same bytes on the wire, the same
instances, the same refusals at the other end.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.codec import decode, encode, pack
from protocol.errors import RemoteProtocolError
from tests.unit.test_codec import SAMPLES, frame
from worker.app import App
from worker.runtime import Worker

COUNTS = st.integers(min_value=0, max_value=2**53)
NAMES = st.text(max_size=30).filter(lambda s: "\x00" not in s)
TIMES = st.floats(allow_nan=False, allow_infinity=False)
WARNINGS = st.lists(st.text(max_size=2000), max_size=10)
ERRORS = st.builds(m.ErrorInfo, name=st.text(max_size=10), message=st.text(max_size=10),
                   stack=st.none() | st.text(max_size=10))
MEMOS = st.builds(m.StepMemo, kind=st.sampled_from(["run", "sleep"]),
                  output=st.none() | st.binary(max_size=10), error=st.none() | ERRORS)


def checkpoint(**fields: Any) -> dict[str, Any]:
    return {"seq": COUNTS, "run_id": NAMES, "fence": COUNTS, **fields}


#: Message class -> the fields its constructor takes, each valid.
HOT: dict[type[Any], dict[str, Any]] = {
    m.StepCompleted: checkpoint(step_id=NAMES, attempt=COUNTS, output=st.binary(max_size=40),
                                started_at=TIMES, ended_at=TIMES),
    m.RunCompleted: checkpoint(output=st.binary(max_size=40), warnings=WARNINGS),
    m.LeaseAccepted: {"run_id": st.text(max_size=30), "fence": COUNTS},
    m.CheckpointAck: {"upto": COUNTS},
    m.Heartbeat: {"in_flight": COUNTS},
    m.LeaseGranted: {
        "run_id": st.text(max_size=30), "fence": COUNTS, "function_id": st.text(max_size=20),
        "events": st.lists(st.binary(max_size=20), max_size=3),
        "memos": st.dictionaries(st.text(max_size=5), MEMOS, max_size=3),
        "attempts": st.dictionaries(st.text(max_size=5), st.integers(0, 100), max_size=3),
        "deferred": st.lists(st.text(max_size=5), max_size=3), "attempt": COUNTS,
        "traceparent": st.none() | st.text(max_size=60)},
}


@st.composite
def hot_fields(draw: st.DrawFn) -> tuple[type[Any], dict[str, Any]]:
    """A hot message class and valid constructor fields, some optional ones left out."""
    cls = draw(st.sampled_from(list(HOT)))
    fields = {}
    for name, values in HOT[cls].items():
        if cls.model_fields[name].is_required() or draw(st.booleans()):
            fields[name] = draw(values)
    return cls, fields


def wire_map(cls: type[Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as the worker hands them to ``unvalidated``: with the type tag, in order."""
    tag = {"type": cls.model_fields["type"].default}
    return {name: {**fields, **tag}[name] for name in cls.model_fields
            if name in fields or name == "type"}


@settings(max_examples=300, deadline=None)
@given(hot_fields())
def test_a_packed_message_is_the_map_pydantic_dumps(case):
    cls, fields = case
    message = cls(**fields)
    assert pack(message) == msgpack.packb(message.model_dump(), use_bin_type=True)
    (back,) = decode(encode([message]))
    assert back == message and pack(back) == pack(message)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda s: s.type)
def test_every_sample_packs_as_pydantic_dumps_it(message):
    assert pack(message) == msgpack.packb(message.model_dump(), use_bin_type=True)


@settings(max_examples=300, deadline=None)
@given(hot_fields())
def test_an_unvalidated_message_is_the_one_pydantic_builds(case):
    cls, fields = case
    validated = cls(**fields)
    built = m.unvalidated(cls, wire_map(cls, fields))
    assert type(built) is cls
    assert built == validated
    assert list(built.__dict__) == list(validated.__dict__)  # the wire map's order
    assert built.model_fields_set == validated.model_fields_set | {"type"}
    assert pack(built) == pack(validated)
    assert decode(encode([built])) == [validated]
    assert built.model_copy(update={"fence": 1}) == validated.model_copy(update={"fence": 1})


def test_unvalidated_fills_defaults_and_refuses_unknown_or_missing_fields():
    done = m.unvalidated(m.RunCompleted, {"seq": 1, "run_id": "r", "fence": 2, "output": b"1"})
    assert done == m.RunCompleted(seq=1, run_id="r", fence=2, output=b"1")
    assert done.warnings == [] and done.type == "run_completed"
    with pytest.raises(TypeError, match="sneaky"):
        m.unvalidated(m.CheckpointAck, {"type": "checkpoint_ack", "upto": 1, "sneaky": 1})
    with pytest.raises(TypeError, match="upto"):
        m.unvalidated(m.CheckpointAck, {"type": "checkpoint_ack"})


def test_an_invalid_unvalidated_message_is_still_refused_by_its_receiver():
    """The shortcut trusts its sender: what a buggy one sends is refused at the other end."""
    bad = m.unvalidated(m.StepCompleted, {
        "seq": 1, "run_id": "r", "fence": 2, "type": "step_completed", "step_id": "a\x00b",
        "attempt": -1, "output": b"1", "started_at": float("nan"), "ended_at": 1.0})
    with pytest.raises(RemoteProtocolError, match="step_completed"):
        decode(encode([bad]))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([m.StepCompleted, m.RunCompleted]), st.data())
async def test_the_worker_emits_the_checkpoints_pydantic_builds(kind, data):
    """The runtime's emitter (unvalidated for these kinds) queues what ``kind(...)`` would."""
    fields = data.draw(st.fixed_dictionaries(
        {k: v for k, v in HOT[kind].items() if k not in ("seq", "run_id", "fence")}))
    worker = Worker([App("shop")])
    worker._emitter(("run-1", 7))(kind, fields)
    (queued,) = worker.outbox.take()
    expected = kind(seq=1, run_id="run-1", fence=7, **fields)
    assert queued == expected and pack(queued) == pack(expected)
    assert worker.outbox.unacked == {1: expected}


def test_a_message_with_nested_models_still_goes_through_model_dump():
    lease = next(s for s in SAMPLES if isinstance(s, m.LeaseGranted))
    data = msgpack.unpackb(pack(lease))
    assert data["memos"]["charge"]["error"]["name"] == "ValueError"
    assert json.loads(data["events"][1]) == {"name": "b", "data": {"x": 1}}
    assert decode(frame(data)) == [lease]
