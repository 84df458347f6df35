"""The shortcuts of the hot messages, against pydantic and the msgpack package, with hypothesis.

``protocol.codec.pack`` sends a message's ``__dict__`` as it is (encoded by msgspec) when it
holds no nested model, ``protocol.codec.decode`` reads frames with msgspec, and
``protocol.messages.unvalidated`` builds the worker's hot messages without validating them.
None may change anything that pydantic and the msgpack package did: the same bytes on the
wire, the same instances, the same refusals in the same words.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.codec import _decode_msgpack, decode, encode, pack
from protocol.errors import RemoteProtocolError
from tests.unit.test_codec import _VALUES, SAMPLES, frame
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


# --- decoding with msgspec reads what the msgpack package reads ----------------------------


def outcome(decoder: Any, data: bytes) -> Any:
    """The messages ``decoder`` reads from ``data``, or the words it refuses them with."""
    try:
        return decoder(data)
    except RemoteProtocolError as exc:
        return ("refused", str(exc))


def same_reading(data: bytes) -> None:
    assert outcome(decode, data) == outcome(_decode_msgpack, data)


#: Values msgpack can carry that no message field takes: extension types, timestamps, maps
#: with non-str keys.
_ODD = st.one_of(
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999)),
    st.dictionaries(st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=3), st.booleans(),
                    min_size=1,
                    max_size=2),
)


@st.composite
def hot_maps(draw: st.DrawFn) -> dict[str, Any]:
    """A hot message's map, then perhaps spoiled: a field dropped, changed or added."""
    cls, fields = draw(hot_fields())
    data = msgpack.unpackb(pack(cls(**fields)))
    change = draw(st.sampled_from(["keep", "drop", "replace", "add"]))
    names = sorted(data)
    if change == "drop":
        del data[draw(st.sampled_from(names))]
    elif change == "replace":
        data[draw(st.sampled_from(names))] = draw(_VALUES | _ODD)
    elif change == "add":
        data[draw(st.text(max_size=8))] = draw(_VALUES | _ODD)
    return data


@settings(max_examples=400, deadline=None)
@given(st.lists(hot_maps() | _VALUES | _ODD, max_size=4))
def test_frames_read_by_msgspec_read_as_the_msgpack_package_reads_them(items):
    same_reading(msgpack.packb(items, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_read_alike(data):
    same_reading(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_real_frame_with_a_byte_changed_reads_alike(data):
    real = encode(SAMPLES)
    index = data.draw(st.integers(0, len(real) - 1))
    same_reading(real[:index] + bytes([data.draw(st.integers(0, 255))]) + real[index + 1:])


@pytest.mark.parametrize("depth", [10, 600, 1100, 5000, 100_000])
def test_arrays_nested_deep_enough_to_trouble_a_parser_read_alike(depth):
    for inner in (b"\xc0", b"\x81\xa4type\xa5drain"):
        same_reading(b"\x91" + b"\x91" * depth + inner)
        same_reading(b"\x92\x81\xa4type\xa5drain" + b"\x91" * depth + inner)


def test_a_repeated_key_counts_once_its_last_value_as_in_the_msgpack_package():
    # fixmap of 3: type=checkpoint_ack, upto=1, upto=2 (a map msgpack.packb cannot write)
    data = b"\x91\x83\xa4type\xaecheckpoint_ack\xa4upto\x01\xa4upto\x02"
    assert decode(data) == [m.CheckpointAck(upto=2)] == _decode_msgpack(data)
    twice = b"\x91\x83\xa4type\xa5drain\xa4upto\x01\xa4type\xaecheckpoint_ack"
    same_reading(twice)


def test_a_str_subclass_is_packed_as_a_str():
    class Name(str):
        pass

    (back,) = decode(encode([m.LeaseAccepted(run_id=Name("r1"), fence=1)]))
    assert back == m.LeaseAccepted(run_id="r1", fence=1) and type(back.run_id) is str
