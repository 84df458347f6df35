"""The worker's typed decoding of its gateway's grants and acks, against pydantic.

``worker.wire.decode_from_gateway`` reads a frame of ``LeaseGranted`` and ``CheckpointAck``
messages straight into msgspec Structs. It must accept exactly the frames
``protocol.codec.decode`` (pydantic) accepts, with the same values, and refuse the others in
the same words.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.codec import decode, encode, pack
from protocol.errors import RemoteProtocolError
from protocol.limits import MAX_COUNT
from protocol.session import Role, Session, State
from protocol.tracecontext import MAX_TRACEPARENT
from tests.unit.test_codec import _VALUES, SAMPLES
from tests.unit.test_hot_messages import spoil
from tests.unit.test_wire_shortcuts import _ODD, HOT
from worker.app import App
from worker.runtime import Worker
from worker.wire import Ack, Grant, decode_from_gateway

MAX = 1 << 20

#: Struct -> the model it spells again.
MODELS: dict[type[Any], type[m._Message]] = {Grant: m.LeaseGranted, Ack: m.CheckpointAck}


def as_model(message: Any) -> Any:
    """A Struct as the model of its kind (validated), anything else as it is."""
    model = MODELS.get(type(message))
    if model is None:
        return message
    return model(**msgspec.structs.asdict(message))


def reading(decoder: Any, data: Any, max_size: int = MAX) -> Any:
    """What ``decoder`` makes of ``data``: models (Structs turned into theirs), or the refusal."""
    try:
        return [as_model(message) for message in decoder(data, max_size=max_size)]
    except RemoteProtocolError as exc:
        return ("refused", str(exc))


#: Values at and past every constraint of the two models.
EDGE_VALUES: list[Any] = [
    True, False, None, 0, 1, -1, MAX_COUNT, MAX_COUNT + 1, 2**63 - 1, 2**64 - 1, -(2**63),
    0.0, 1.0, float("nan"), "", "x", "a\x00b", "é", b"", b"x", [], {}, ["x"], [b"x"], [1],
    [None], {"a": 1}, {"a": True}, {"a": -1}, {1: 1}, {"a": b"x"},
    "t" * MAX_TRACEPARENT, "t" * (MAX_TRACEPARENT + 1), "é" * MAX_TRACEPARENT,
    {"s": {"kind": "run", "output": b"1"}}, {"s": {"kind": "run", "output": "1"}},
    {"s": {"output": b"1", "error": {"name": "E", "message": "m"}}},
    {"s": {"error": {"name": "E"}}}, {"s": {"kind": 1}}, {"s": {"sneaky": 1}}, {"s": None},
]
EDGES = st.sampled_from(EDGE_VALUES)

#: A valid one of each, every field given.
BASES: list[m._Message] = [
    m.LeaseGranted(run_id="run-1", fence=1, function_id="shop/f",
                   events=[b'{"name":"a","data":{}}'],
                   memos={"one": m.StepMemo(output=b"1"),
                          "two": m.StepMemo(kind="sleep", error=m.ErrorInfo(name="E",
                                                                            message="m"))},
                   attempts={"three": 2}, deferred=["three"], attempt=1,
                   traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    m.CheckpointAck(upto=41),
]


@st.composite
def gateway_maps(draw: st.DrawFn) -> dict[Any, Any]:
    """A grant's or an ack's map, perhaps spoiled at a constraint or beyond recognition."""
    cls = draw(st.sampled_from(list(MODELS.values())))
    fields = {name: draw(values) for name, values in HOT[cls].items()
              if cls.model_fields[name].is_required() or draw(st.booleans())}
    data: dict[Any, Any] = msgpack.unpackb(encode([cls(**fields)]))[0]
    return spoil(draw, data, EDGES)


@settings(max_examples=1000, deadline=None)
@given(st.lists(gateway_maps(), min_size=1, max_size=4))
def test_frames_of_grants_and_acks_are_accepted_and_refused_as_pydantic_does(items):
    data = msgpack.packb(items, use_bin_type=True)
    typed = reading(decode_from_gateway, data)
    assert typed == reading(decode, data)
    if isinstance(typed, list) and all(item.get("type") in {"lease_granted", "checkpoint_ack"}
                                       for item in items):
        # Accepted, and only grants and acks: read by msgspec, no model built for them.
        assert all(type(x) in MODELS for x in decode_from_gateway(data, max_size=MAX))


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.type)
def test_every_field_at_every_edge_reads_alike(base):
    """Each field set to each value at or past a constraint, in turn: deterministic, so no
    constraint of the models can be missed by chance."""
    valid = msgpack.unpackb(encode([base]))[0]
    accepted = 0
    for name in [*valid, "extra"]:
        for value in [*EDGE_VALUES, _MISSING]:
            item = {**valid, name: value}
            if value is _MISSING:
                del item[name]
            data = msgpack.packb([valid, item], use_bin_type=True)
            typed = reading(decode_from_gateway, data)
            assert typed == reading(decode, data), (name, value)
            if isinstance(typed, list):
                accepted += 1
    assert accepted > len(valid)  # some edges are inside the limits


_MISSING = object()


@settings(max_examples=300, deadline=None)
@given(st.lists(gateway_maps() | _VALUES | _ODD, max_size=4))
def test_frames_mixing_grants_and_other_values_read_alike(items):
    data = msgpack.packb(items, use_bin_type=True)
    assert reading(decode_from_gateway, data) == reading(decode, data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_frame_with_a_byte_changed_reads_alike(data):
    real = encode(BASES)
    index = data.draw(st.integers(0, len(real) - 1))
    spoiled = real[:index] + bytes([data.draw(st.integers(0, 255))]) + real[index + 1:]
    assert reading(decode_from_gateway, spoiled) == reading(decode, spoiled)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_read_alike(data):
    assert reading(decode_from_gateway, data) == reading(decode, data)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda s: s.type)
def test_every_sample_reads_alike(message):
    data = encode([message])
    assert reading(decode_from_gateway, data) == reading(decode, data) == [message]


def test_malformed_grants_are_refused_with_a_clear_error():
    good = msgpack.unpackb(encode(BASES[:1]))[0]
    cases = {
        "fence": ({**good, "fence": -1}, "malformed lease_granted message: fence"),
        "events": ({**good, "events": ["text, not bytes"]}, "malformed lease_granted message"),
        "memos": ({**good, "memos": {"one": {"output": "text"}}},
                  "malformed lease_granted message: memos.one.output"),
        "unknown": ({**good, "sneaky": 1}, "sneaky"),
        "missing": ({k: v for k, v in good.items() if k != "run_id"}, "run_id"),
    }
    for name, (item, words) in cases.items():
        data = msgpack.packb([item], use_bin_type=True)
        with pytest.raises(RemoteProtocolError, match=words.replace(".", r"\.")) as typed:
            decode_from_gateway(data, max_size=MAX)
        with pytest.raises(RemoteProtocolError) as validated:
            decode(data)
        assert str(typed.value) == str(validated.value), name


def test_text_and_oversize_frames_are_refused_in_the_same_words():
    frame = encode([m.CheckpointAck(upto=1)])
    for data, limit in ((frame.decode("latin-1"), 100), (frame, len(frame) - 1)):
        with pytest.raises(RemoteProtocolError) as typed:
            decode_from_gateway(data, max_size=limit)
        with pytest.raises(RemoteProtocolError) as validated:
            decode(data, max_size=limit)
        assert str(typed.value) == str(validated.value)


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


def _connected(worker: Worker) -> Worker:
    """``worker`` as if its socket were ready (what it sends stays in its outbox)."""
    session = Session(Role.WORKER)
    session.state = State.READY
    worker.link.session = session
    worker.link.connected.set()
    return worker


async def test_a_decoded_grant_runs_and_is_answered_as_a_model_is():
    """A worker handed a grant read by msgspec starts its run, answers it with the
    LeaseAccepted pydantic builds, and checkpoints what the run's memos say."""
    app = App("shop")

    @app.function(id="f")
    async def f(ctx: Any) -> Any:
        one = await ctx.step.run("one", lambda: 10)  # recorded: not run again
        two = await ctx.step.run("two", lambda: 2)
        return one + two

    worker = _connected(Worker([app]))
    lease = m.LeaseGranted(run_id="run-1", fence=3, function_id="shop/f",
                           events=[json.dumps({"name": "go", "data": {}}).encode()],
                           memos={"one": m.StepMemo(output=b"1")})
    [grant] = decode_from_gateway(encode([lease]), max_size=MAX)
    assert type(grant) is Grant and as_model(grant) == lease
    worker._on_message(grant)
    [accepted] = worker.outbox.take()
    assert accepted == m.LeaseAccepted(run_id="run-1", fence=3)
    assert pack(accepted) == pack(m.LeaseAccepted(run_id="run-1", fence=3))
    await worker.executions[("run-1", 3)].wait()
    sent = worker.outbox.take()
    assert [c.type for c in sent] == ["step_completed", "run_completed"]
    assert sent[0].step_id == "two" and sent[1].output == b"3"  # type: ignore[union-attr]
    [ack] = decode_from_gateway(encode([m.CheckpointAck(upto=2)]), max_size=MAX)
    assert type(ack) is Ack
    worker._on_message(ack)
    assert worker.outbox.unacked == {}
    worker.threads.shutdown()


async def test_the_last_leases_that_ended_are_remembered_and_the_older_forgotten(monkeypatch):
    """A grant sent again for one of the last FINISHED_KEPT leases that ended here is answered
    and not run; one older than those runs again (the gateway never resends those)."""
    monkeypatch.setattr("worker.runtime.FINISHED_KEPT", 3)
    app = App("shop")
    bodies: list[str] = []

    @app.function(id="f")
    async def f(ctx: Any) -> Any:
        bodies.append(ctx.run_id)

    worker = _connected(Worker([app]))

    def grant(run_id: str) -> Grant:
        lease = m.LeaseGranted(run_id=run_id, fence=1, function_id="shop/f",
                               events=[b'{"name":"go","data":{}}'])
        [decoded] = decode_from_gateway(encode([lease]), max_size=MAX)
        return decoded  # type: ignore[return-value]

    async def lease(run_id: str) -> None:
        worker._on_message(grant(run_id))
        execution = worker.executions.get((run_id, 1))
        if execution is not None:
            await execution.wait()

    for run_id in ("r1", "r2", "r3", "r4", "r5"):
        await lease(run_id)
    for run_id in ("r3", "r4", "r5"):  # remembered: answered, not run
        await lease(run_id)
    assert bodies == ["r1", "r2", "r3", "r4", "r5"]
    await lease("r2")  # forgotten: runs again
    assert bodies == ["r1", "r2", "r3", "r4", "r5", "r2"]
    answers = [msg for msg in worker.outbox.take() if isinstance(msg, m.LeaseAccepted)]
    assert [a.run_id for a in answers] == ["r1", "r2", "r3", "r4", "r5", "r3", "r4", "r5", "r2"]
    worker.threads.shutdown()


@pytest.mark.parametrize("depth", [100, 10_000, 200_000])
def test_a_grant_nested_deep_is_refused_in_the_same_words(depth):
    # A memo's value nested ``depth`` arrays deep (msgpack's fixarray of one, 0x91), built
    # as bytes: no encoder would write it, a hostile gateway or intermediary could.
    frame = msgpack.packb([{**msgpack.unpackb(encode(BASES[:1]))[0], "memos": {"s": None}}],
                          use_bin_type=True)
    at = frame.rindex(b"\xc0")
    deep = frame[:at] + b"\x91" * depth + b"\xc0" + frame[at + 1:]
    refused = reading(decode_from_gateway, deep, max_size=len(deep))
    assert refused == reading(decode, deep, max_size=len(deep))
    assert refused[0] == "refused"
