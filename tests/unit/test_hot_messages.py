"""The gateway's typed decoding of the worker's per-run messages, against pydantic.

``protocol.codec.decode_from_worker`` reads a frame of hot messages straight into the msgspec
Structs of ``protocol.hot``. It must accept exactly the frames ``decode`` (pydantic) accepts,
with the same values, and refuse the others in the same words.
"""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import hot
from protocol import messages as m
from protocol.codec import decode, decode_from_worker, encode
from protocol.errors import RemoteProtocolError
from protocol.limits import MAX_COUNT, MAX_RUN_WARNING, MAX_RUN_WARNINGS
from tests.unit.test_codec import _VALUES, SAMPLES
from tests.unit.test_wire_shortcuts import _ODD, HOT, hot_fields

#: Struct -> the model it spells again.
MODELS: dict[type[Any], type[m._Message]] = {
    hot.StepCompleted: m.StepCompleted,
    hot.RunCompleted: m.RunCompleted,
    hot.LeaseAccepted: m.LeaseAccepted,
    hot.Heartbeat: m.Heartbeat,
}

#: Values at and past every constraint of the hot models: strict types, bounds, finite
#: floats, NUL in names, lengths of warnings (in characters, not bytes).
EDGE_VALUES: list[Any] = [
    True, False, None, 0, 1, -1, MAX_COUNT, MAX_COUNT + 1, 2**63 - 1, 2**64 - 1, -(2**63),
    0.0, -0.0, 1.0, 1.5, float("nan"), float("inf"), float("-inf"), 1.7976931348623157e308,
    "", "x", "a\x00b", "\x00", "\n", "é", b"", b"x", b"\x00", [], {}, ["x"],
    ["w"] * MAX_RUN_WARNINGS, ["w"] * (MAX_RUN_WARNINGS + 1),
    ["x" * MAX_RUN_WARNING], ["x" * (MAX_RUN_WARNING + 1)],
    ["\U0001f642" * MAX_RUN_WARNING], ["\U0001f642" * (MAX_RUN_WARNING + 1)],
    ["é" * MAX_RUN_WARNING], [b"w"], [1], [None],
]
EDGES = st.sampled_from(EDGE_VALUES)

#: A valid one of each hot worker message, every field given.
BASES: list[m._Message] = [
    m.StepCompleted(seq=1, run_id="run-1", fence=1, step_id="one", attempt=0, output=b"1",
                    started_at=1.5, ended_at=2.5),
    m.RunCompleted(seq=2, run_id="run-1", fence=1, output=b"6", warnings=["w"]),
    m.LeaseAccepted(run_id="run-1", fence=1),
    m.Heartbeat(in_flight=3),
]

WORKER_HOT = [cls for cls in HOT if cls in MODELS.values()]


def as_model(message: Any) -> Any:
    """A Struct as the model of its kind (validated), anything else as it is."""
    model = MODELS.get(type(message))
    if model is None:
        return message
    return model(**msgspec.structs.asdict(message))


def reading(decoder: Any, data: bytes) -> Any:
    """What ``decoder`` makes of ``data``: models (Structs turned into theirs), or the refusal."""
    try:
        return [as_model(message) for message in decoder(data)]
    except RemoteProtocolError as exc:
        return ("refused", str(exc))


def spoil(draw: st.DrawFn, data: dict[Any, Any], edges: st.SearchStrategy[Any]
          ) -> dict[Any, Any]:
    """``data`` (a message's map) with up to two changes: a field set to one of ``edges`` or
    to an odd value, a field dropped, one added, or its type replaced."""
    for _ in range(draw(st.integers(0, 2))):
        change = draw(st.sampled_from(["edge", "edge", "drop", "add", "odd", "type"]))
        names = sorted(data)
        if change == "edge":
            data[draw(st.sampled_from(names))] = draw(edges)
        elif change == "drop":
            data.pop(draw(st.sampled_from(names)))
        elif change == "add":
            data[draw(st.text(max_size=8))] = draw(edges | _VALUES)
        elif change == "odd":
            data[draw(st.sampled_from(names))] = draw(_ODD)
        else:
            data["type"] = draw(st.sampled_from(sorted(m.MESSAGE_TYPES)) | st.text(max_size=5)
                                | edges)
    return data


@st.composite
def worker_maps(draw: st.DrawFn) -> dict[Any, Any]:
    """A hot worker message's map, perhaps spoiled at a constraint or beyond recognition."""
    cls, fields = draw(hot_fields())
    if cls not in MODELS.values():
        cls = draw(st.sampled_from(WORKER_HOT))
        fields = {name: draw(values) for name, values in HOT[cls].items()
                  if cls.model_fields[name].is_required()}
    data: dict[Any, Any] = msgpack.unpackb(encode([cls(**fields)]))[0]
    return spoil(draw, data, EDGES)


@settings(max_examples=1000, deadline=None)
@given(st.lists(worker_maps(), min_size=1, max_size=4))
def test_hot_frames_are_accepted_and_refused_as_pydantic_does(items):
    data = msgpack.packb(items, use_bin_type=True)
    typed = reading(decode_from_worker, data)
    assert typed == reading(decode, data)
    if isinstance(typed, list) and all(item.get("type") in {c.type for c in MODELS}
                                       for item in items):
        # Accepted, and every message a hot one: read by msgspec alone, no pydantic.
        assert all(type(message) in MODELS for message in decode_from_worker(data))


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.type)
def test_every_field_at_every_edge_reads_alike(base):
    """Each field of each hot message set to each value at or past a constraint, in turn:
    deterministic, so no constraint of the models can be missed by chance."""
    valid = msgpack.unpackb(encode([base]))[0]
    accepted = 0
    for name in [*valid, "extra"]:
        for value in [*EDGE_VALUES, _MISSING]:
            item = {**valid, name: value}
            if value is _MISSING:
                del item[name]
            data = msgpack.packb([valid, item], use_bin_type=True)
            typed = reading(decode_from_worker, data)
            assert typed == reading(decode, data), (name, value)
            if isinstance(typed, list):
                accepted += 1
                assert all(type(x) in MODELS for x in decode_from_worker(data)), (name, value)
    assert accepted > len(valid)  # some edges are inside the limits


_MISSING = object()


@settings(max_examples=300, deadline=None)
@given(st.lists(worker_maps() | _VALUES | _ODD, max_size=4))
def test_frames_mixing_hot_and_other_values_read_alike(items):
    data = msgpack.packb(items, use_bin_type=True)
    assert reading(decode_from_worker, data) == reading(decode, data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_hot_frame_with_a_byte_changed_reads_alike(data):
    real = encode([
        m.LeaseAccepted(run_id="run-1", fence=1),
        m.StepCompleted(seq=1, run_id="run-1", fence=1, step_id="one", attempt=0,
                        output=b"1", started_at=1.5, ended_at=2.5),
        m.RunCompleted(seq=2, run_id="run-1", fence=1, output=b"6", warnings=["w"]),
        m.Heartbeat(in_flight=3),
    ])
    index = data.draw(st.integers(0, len(real) - 1))
    spoiled = real[:index] + bytes([data.draw(st.integers(0, 255))]) + real[index + 1:]
    assert reading(decode_from_worker, spoiled) == reading(decode, spoiled)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_read_alike(data):
    assert reading(decode_from_worker, data) == reading(decode, data)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda s: s.type)
def test_every_sample_reads_alike(message):
    data = encode([message])
    assert reading(decode_from_worker, data) == reading(decode, data) == [message]


def test_text_and_oversize_frames_are_refused_in_the_same_words():
    frame = encode([m.Heartbeat()])
    for data, limit in ((frame.decode("latin-1"), 100), (frame, len(frame) - 1)):
        with pytest.raises(RemoteProtocolError) as typed:
            decode_from_worker(data, max_size=limit)
        with pytest.raises(RemoteProtocolError) as validated:
            decode(data, max_size=limit)
        assert str(typed.value) == str(validated.value)


def test_a_repeated_type_tag_reads_as_its_last_value():
    # type=heartbeat, in_flight=1, type=drain: a drain with an unknown field, for both.
    data = b"\x91\x83\xa4type\xa9heartbeat\xa9in_flight\x01\xa4type\xa5drain"
    assert reading(decode_from_worker, data) == reading(decode, data)
    assert reading(decode, data)[0] == "refused"
    # type=drain first, then type=heartbeat: a heartbeat (msgspec refuses; pydantic reads it).
    data = b"\x91\x83\xa4type\xa5drain\xa9in_flight\x01\xa4type\xa9heartbeat"
    assert decode_from_worker(data) == decode(data) == [m.Heartbeat(in_flight=1)]


@pytest.mark.parametrize("struct", list(MODELS), ids=lambda c: c.type)
def test_each_struct_has_its_models_fields_defaults_and_tag(struct):
    model = MODELS[struct]
    fields = {f.name: f for f in msgspec.structs.fields(struct)}
    assert set(fields) | {"type"} == set(model.model_fields)
    assert struct.type == model.model_fields["type"].default == struct.__struct_config__.tag
    for name, field in fields.items():
        info = model.model_fields[name]
        assert (field.required, info.is_required()) in ((True, True), (False, False)), name
        if not field.required:
            default = (field.default_factory() if field.default is msgspec.NODEFAULT
                       else field.default)
            assert default == info.get_default(call_default_factory=True), name


def test_the_gateway_reads_its_workers_hot_frames_as_structs():
    frame = encode([
        m.LeaseAccepted(run_id="r", fence=1),
        m.StepCompleted(seq=1, run_id="r", fence=1, step_id="a", attempt=0, output=b"1",
                        started_at=1.0, ended_at=2.0),
        m.RunCompleted(seq=2, run_id="r", fence=1, output=b"2"),
        m.Heartbeat(),
    ])
    assert [type(x) for x in decode_from_worker(frame)] == [
        hot.LeaseAccepted, hot.StepCompleted, hot.RunCompleted, hot.Heartbeat]
    # One message of another kind, and the whole frame is read as models.
    mixed = decode_from_worker(frame[:1].replace(b"\x94", b"\x95") + frame[1:]
                               + encode([m.Drain()])[1:])
    assert [type(x) for x in mixed] == [
        m.LeaseAccepted, m.StepCompleted, m.RunCompleted, m.Heartbeat, m.Drain]
