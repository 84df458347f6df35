"""The worker socket of an in-process gateway, spoken to by hand over real loopback sockets.

Covers the handshake (dev and signing key), every way a peer can misbehave (each gets an
``Error`` frame where the protocol allows one and a close code, and never stops the gateway
from serving the next worker), heartbeats, and fencing end to end.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
import msgpack
import pytest
from structlog.testing import capture_logs

from gateway.app import Gateway
from gateway.clock import FakeClock
from protocol import messages as m
from protocol.auth import answer
from protocol.manifest import AppManifest, FunctionConfig, TriggerEvent
from tests.helpers.waiting import bound, eventually
from tests.integration.raw_worker import (
    EVENT,
    FUNCTION,
    RawWorker,
    app_manifest,
    hello,
)

KEY = "signkey-dT25LeJE48-y0QWLiTyAR-9XD1krsY1cFZz9cQfkgHE"
OTHER_KEY = "signkey-0PluuBHVIpw4VjdPya8pocC_ZuCNH2eeLQfwObkA8Fs"
HEARTBEAT = 5.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def gw(gateway_factory, clock):
    return await gateway_factory(clock=clock, heartbeat_interval=HEARTBEAT)


@pytest.fixture
async def http(gw):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}",
                                 headers={"authorization": f"Bearer {KEY}"}) as client:
        yield client


async def serves_a_good_worker(gw: Gateway, key: str | None = None) -> None:
    """The gateway still completes a handshake and answers a heartbeat."""
    worker = await RawWorker.ready_on(gw.connect_port, key=key, instance_id="well-behaved")
    await worker.send(m.Heartbeat(in_flight=0))
    await worker.expect(m.HeartbeatAck)
    await worker.close()


async def post_event(http: httpx.AsyncClient, data: dict[str, Any] | None = None) -> str:
    r = await http.post("/e/dev", json={"name": EVENT, "data": data or {}})
    assert r.status_code == 200, r.text
    (event_id,) = r.json()["ids"]
    return str(event_id)


async def run_of(http: httpx.AsyncClient, event_id: str) -> dict[str, Any]:
    async def one_run():
        runs = (await http.get(f"/v1/events/{event_id}/runs")).json()["data"]
        return runs[0] if runs else None

    run: dict[str, Any] = await eventually(one_run, timeout=5,
                                           what=f"the run of event {event_id}")
    return run


# --- handshake -------------------------------------------------------------------------------


async def test_handshake_in_dev_mode(gw, http):
    worker = await RawWorker.open(gw.connect_port)
    challenge = worker.challenge
    assert challenge.protocol_version == m.PROTOCOL_VERSION
    assert challenge.gateway_id == gw.gateway_id
    assert len(challenge.nonce) >= 16

    await worker.authenticate(instance_id="dev-1", mac=b"anything goes in --dev")
    await worker.send(hello("dev-1", capacity=7))
    ready = await worker.expect(m.Ready)

    assert ready.session_id
    assert ready.heartbeat_interval == HEARTBEAT
    assert ready.lease_ttl == 3 * HEARTBEAT
    assert ready.max_frame_size == gw.settings.frame_limit
    (listed,) = (await http.get("/v1/workers")).json()["data"]
    assert (listed["session_id"], listed["instance_id"], listed["capacity"]) == (
        ready.session_id, "dev-1", 7)
    assert listed["functions"] == [FUNCTION]
    assert [f["id"] for f in (await http.get("/v1/functions")).json()["data"]] == [FUNCTION]


@pytest.mark.parametrize("key", [KEY, OTHER_KEY])
async def test_handshake_with_a_signing_key(gateway_factory, key):
    gw = await gateway_factory(dev=False, signing_keys=[KEY, OTHER_KEY])
    worker = await RawWorker.open(gw.connect_port)
    nonces = {worker.challenge.nonce}
    ready = await worker.handshake(key=key, instance_id="keyed")
    assert ready.session_id
    await worker.send(m.Heartbeat())
    await worker.expect(m.HeartbeatAck)

    other = await RawWorker.open(gw.connect_port)
    nonces.add(other.challenge.nonce)
    assert len(nonces) == 2, "every socket gets a fresh challenge"


@pytest.mark.parametrize("forgery", ["wrong key", "answer made for another instance", "empty"])
async def test_a_wrong_mac_is_refused(gateway_factory, forgery):
    gw = await gateway_factory(dev=False, signing_keys=[KEY])
    worker = await RawWorker.open(gw.connect_port)
    nonce = worker.challenge.nonce
    mac = {
        "wrong key": answer("not-the-key", nonce, "forger"),
        "answer made for another instance": answer(KEY, nonce, "someone-else"),
        "empty": b"",
    }[forgery]

    with capture_logs() as logs:
        await worker.send(m.Answer(instance_id="forger", mac=mac))
        error = await worker.expect(m.Error)
        code, reason = await worker.wait_closed()

    assert error.code == "unauthorized"
    assert "signing key" in error.message
    assert code == 1008
    assert reason
    assert worker.of(m.Ready) == [] and worker.of(m.Authenticated) == []
    refused = [e for e in logs if e["event"] == "worker_refused"]
    assert refused and refused[0]["code"] == "unauthorized"
    assert refused[0]["log_level"] == "warning"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        r = await http.get("/v1/workers", headers={"authorization": f"Bearer {KEY}"})
        assert r.json()["data"] == []
    await serves_a_good_worker(gw, key=KEY)


async def test_a_protocol_version_mismatch_is_refused(gw, http):
    worker = await RawWorker.open(gw.connect_port)
    await worker.authenticate()
    await worker.send(hello(version=m.PROTOCOL_VERSION + 1))
    error = await worker.expect(m.Error)
    code, reason = await worker.wait_closed()

    assert error.code == "bad_frame"
    assert "protocol version" in error.message
    assert str(m.PROTOCOL_VERSION + 1) in error.message
    assert code == 1002 and reason
    assert (await http.get("/v1/functions")).json()["data"] == []
    await serves_a_good_worker(gw)


async def test_the_hello_must_name_the_instance_the_answer_was_made_for(gateway_factory):
    gw = await gateway_factory(dev=False, signing_keys=[KEY])
    worker = await RawWorker.open(gw.connect_port)
    await worker.authenticate(key=KEY, instance_id="honest")
    await worker.send(hello("impostor"))
    error = await worker.expect(m.Error)
    assert error.code == "bad_frame" and "impostor" in error.message
    assert (await worker.wait_closed())[0] == 1002
    await serves_a_good_worker(gw, key=KEY)


@pytest.mark.parametrize("extra", ["hello", "heartbeat"])
async def test_nothing_may_follow_the_answer_before_the_gateway_answers(gw, http, extra):
    worker = await RawWorker.open(gw.connect_port)
    follower = hello() if extra == "hello" else m.Heartbeat()
    await worker.send(m.Answer(instance_id="raw-1", mac=b""), follower)
    error = await worker.expect(m.Error)
    code, _ = await worker.wait_closed()
    assert error.code == "bad_frame"
    assert extra in error.message
    assert code == 1002
    assert worker.of(m.Ready) == []
    assert (await http.get("/v1/workers")).json()["data"] == []


# --- misbehaving peers -----------------------------------------------------------------------

_STEP = {"type": "step_completed", "seq": 1, "run_id": "r", "fence": 1, "step_id": "a",
         "attempt": 0, "output": b"1", "started_at": 1.0, "ended_at": 2.0}

BAD_FRAMES = {
    "garbage bytes": b"\xc1\xc1\xc1 not msgpack",
    "a text frame": "[{\"type\": \"heartbeat\"}]",
    "not an array": msgpack.packb({"type": "heartbeat"}),
    "an unknown message type": msgpack.packb([{"type": "launch_missiles"}]),
    "a message without a type": msgpack.packb([{"in_flight": 1}]),
    "a malformed message": msgpack.packb([{"type": "heartbeat", "in_flight": "many"}]),
    "a checkpoint before hello": msgpack.packb([_STEP]),
    "a hello before the answer": None,
    "an answer without an instance": msgpack.packb([{"type": "answer", "mac": b"x"}]),
    "a gateway's message": msgpack.packb([{"type": "heartbeat_ack"}]),
}


@pytest.mark.parametrize("what", sorted(BAD_FRAMES))
async def test_a_bad_frame_during_the_handshake_closes_the_socket(gw, what):
    worker = await RawWorker.open(gw.connect_port)
    frame = BAD_FRAMES[what]
    await (worker.send(hello()) if frame is None else worker.send_raw(frame))
    error = await worker.expect(m.Error)
    code, reason = await worker.wait_closed()

    assert error.code == "bad_frame"
    assert error.message
    assert code == 1002 and reason
    await serves_a_good_worker(gw)


AFTER_READY = {
    "garbage bytes": b"\x00\xff\xfe",
    "a text frame": "heartbeat",
    "an unknown message type": msgpack.packb([{"type": "reboot"}]),
    "a second hello": None,
    "a second answer": msgpack.packb([{"type": "answer", "instance_id": "raw-1",
                                       "mac": b"again"}]),
}


@pytest.mark.parametrize("what", sorted(AFTER_READY))
async def test_a_bad_frame_after_ready_closes_the_socket_and_frees_the_worker(gw, http, what):
    worker = await RawWorker.ready_on(gw.connect_port)
    frame = AFTER_READY[what]
    if frame is None:
        await worker.send(hello())
    else:
        await worker.send_raw(frame)
    error = await worker.expect(m.Error)
    code, _ = await worker.wait_closed()

    assert error.code == "bad_frame"
    assert code == 1002

    async def no_workers():
        return (await http.get("/v1/workers")).json()["data"] == []

    await eventually(no_workers, timeout=5, what="the refused worker to be dropped")
    await serves_a_good_worker(gw)


async def test_the_unknown_type_is_named_in_the_error(gw):
    worker = await RawWorker.open(gw.connect_port)
    await worker.send_raw(BAD_FRAMES["an unknown message type"])
    error = await worker.expect(m.Error)
    assert "launch_missiles" in error.message


async def test_an_oversize_frame_closes_the_socket(gateway_factory, clock):
    gw = await gateway_factory(clock=clock, max_frame_size=4096)
    worker = await RawWorker.ready_on(gw.connect_port)
    assert worker.ready.max_frame_size == 4096
    await worker.send(m.Heartbeat())
    await worker.expect(m.HeartbeatAck)

    await worker.send(worker.step_completed("some-run", 1, output=b'"' + b"x" * 8000 + b'"'))
    code, _ = await worker.wait_closed()

    assert code == 1009
    await serves_a_good_worker(gw)


# --- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize("if_", ["event.data.x ==", "async.data.x == 1",
                                 "event" + ".a" * 20_000, "1" + " + 1" * 20_000])
async def test_a_bad_trigger_expression_is_refused_at_registration(gw, http, if_):
    worker = await RawWorker.open(gw.connect_port)
    await worker.authenticate()
    await worker.send(hello(apps=[app_manifest(if_=if_)]))
    error = await worker.expect(m.Error)
    code, reason = await worker.wait_closed()

    assert error.code == "bad_expression"
    assert FUNCTION in error.message
    assert code is not None and code != 1000 and reason
    assert worker.of(m.Ready) == []
    assert (await http.get("/v1/functions")).json()["data"] == []
    assert (await http.get("/v1/workers")).json()["data"] == []
    r = await http.post("/e/dev", json={"name": EVENT})
    (event_id,) = r.json()["ids"]
    assert (await http.get(f"/v1/events/{event_id}/runs")).json()["data"] == []


async def test_a_hello_with_one_bad_app_registers_none_of_its_apps(gw, http):
    good = app_manifest("good")
    bad = app_manifest("bad", if_="event.data.x ==")
    worker = await RawWorker.open(gw.connect_port)
    await worker.authenticate()
    await worker.send(hello(apps=[good, bad]))
    error = await worker.expect(m.Error)
    await worker.wait_closed()

    assert error.code == "bad_expression"
    assert (await http.get("/v1/functions")).json()["data"] == []
    r = await http.post("/e/dev", json={"name": EVENT})
    (event_id,) = r.json()["ids"]
    assert (await http.get(f"/v1/events/{event_id}/runs")).json()["data"] == []


async def test_a_refused_registration_leaves_the_app_s_previous_functions_alone(gw, http):
    first = await RawWorker.ready_on(gw.connect_port)
    before = (await http.get("/v1/functions")).json()["data"]
    assert [(f["id"], f["active"]) for f in before] == [(FUNCTION, True)]

    broken = AppManifest(id="raw", version="2", functions=[
        FunctionConfig(id="other", triggers=[TriggerEvent("x", if_="nope(")])
    ])
    worker = await RawWorker.open(gw.connect_port)
    await worker.authenticate(instance_id="v2")
    await worker.send(hello("v2", apps=[broken]))
    assert (await worker.expect(m.Error)).code == "bad_expression"
    await worker.wait_closed()

    after = (await http.get("/v1/functions")).json()["data"]
    assert [(f["id"], f["active"], f["app_version"]) for f in after] == [(FUNCTION, True, "1")]
    await first.close()


async def test_no_hello_within_the_handshake_timeout_closes_the_socket(gw):
    gw.workers.settings = dataclasses.replace(gw.workers.settings, handshake_timeout=0.2)
    worker = await RawWorker.open(gw.connect_port)
    code, reason = await worker.wait_closed(timeout=5)
    assert code == 1002
    assert "handshake" in (reason or "")
    (error,) = worker.of(m.Error)
    assert "handshake" in error.message
    await serves_a_good_worker(gw)


# --- heartbeats ------------------------------------------------------------------------------


async def test_a_heartbeat_gets_an_ack(gw):
    worker = await RawWorker.ready_on(gw.connect_port)
    for _ in range(3):
        await worker.send(m.Heartbeat(in_flight=0))
        await worker.expect(m.HeartbeatAck)
    assert len(worker.of(m.HeartbeatAck)) == 3


async def test_a_silent_worker_is_dropped_after_three_intervals(gw, http, clock):
    silent = await RawWorker.ready_on(gw.connect_port, instance_id="silent")
    beating = await RawWorker.ready_on(gw.connect_port, instance_id="beating")

    clock.advance(2 * HEARTBEAT)
    await beating.send(m.Heartbeat())
    await beating.expect(m.HeartbeatAck)
    clock.advance(HEARTBEAT + 1)  # silent: 3 intervals + 1 s; beating: 1 interval + 1 s

    code, _ = await silent.wait_closed()
    assert code == 4000
    await beating.send(m.Heartbeat())
    await beating.expect(m.HeartbeatAck)
    workers = (await http.get("/v1/workers")).json()["data"]
    assert [w["instance_id"] for w in workers] == ["beating"]


# --- lost grants ---------------------------------------------------------------------------
# TCP loses nothing, but an intermediary can drop a frame: a grant the worker never answers is
# sent again every heartbeat interval until it does, and never once its lease has ended.


async def beat(worker: RawWorker, clock: FakeClock, times: int = 1) -> None:
    """A heartbeat interval passes ``times`` times, the worker alive and heard each time."""
    for _ in range(times):
        clock.advance(HEARTBEAT)
        await worker.send(m.Heartbeat())
        await worker.expect(m.HeartbeatAck)


async def test_an_unanswered_grant_is_sent_again_until_the_worker_answers(gw, http, clock):
    worker = await RawWorker.ready_on(gw.connect_port)
    await post_event(http)
    grant = await worker.expect(m.LeaseGranted)

    clock.advance(HEARTBEAT)
    assert await worker.expect(m.LeaseGranted) == grant  # same run, same fence
    clock.advance(HEARTBEAT)
    assert await worker.expect(m.LeaseGranted) == grant

    await worker.send(m.LeaseAccepted(run_id=grant.run_id, fence=grant.fence), m.Heartbeat())
    await worker.expect(m.HeartbeatAck)  # the answer was read
    await beat(worker, clock, times=3)
    assert len(worker.of(m.LeaseGranted)) == 3
    assert worker.ws.close_code is None


async def test_a_checkpoint_answers_its_grant(gw, http, clock):
    worker = await RawWorker.ready_on(gw.connect_port)
    await post_event(http)
    grant = await worker.expect(m.LeaseGranted)
    await worker.send(worker.step_completed(grant.run_id, grant.fence, "a", b'"1"'))
    await worker.expect(m.CheckpointAck)
    await beat(worker, clock, times=3)
    assert len(worker.of(m.LeaseGranted)) == 1


async def test_a_grant_whose_lease_ended_is_not_sent_again(gw, http, clock):
    worker = await RawWorker.ready_on(gw.connect_port)
    await post_event(http)
    grant = await worker.expect(m.LeaseGranted)
    r = await http.post(f"/v1/runs/{grant.run_id}/cancel")
    assert r.status_code == 200, r.text
    revoked = await worker.expect(m.LeaseRevoked)
    assert (revoked.run_id, revoked.fence) == (grant.run_id, grant.fence)
    await beat(worker, clock, times=3)
    assert len(worker.of(m.LeaseGranted)) == 1


# --- fencing ---------------------------------------------------------------------------------


async def test_a_closed_worker_s_lease_moves_on_and_its_old_fence_is_refused(gw, http):
    a = await RawWorker.ready_on(gw.connect_port, instance_id="a")
    event_id = await post_event(http)
    lease_a = await a.expect(m.LeaseGranted)
    await a.send(m.LeaseAccepted(run_id=lease_a.run_id, fence=lease_a.fence))
    await a.send(a.step_completed(lease_a.run_id, lease_a.fence, "first", b'"by a"'))
    await a.expect(m.CheckpointAck)
    await a.close()

    b = await RawWorker.ready_on(gw.connect_port, instance_id="b")
    lease_b = await b.expect(m.LeaseGranted)
    assert (lease_b.run_id, lease_b.fence) == (lease_a.run_id, lease_a.fence + 2)  # revoked, leased
    assert lease_b.memos == {"first": m.StepMemo(output=b'"by a"')}

    # a comes back and resends a checkpoint of its old lease: refused, nothing changes.
    a2 = await RawWorker.ready_on(gw.connect_port, instance_id="a")
    stale = a2.step_completed(lease_a.run_id, lease_a.fence, "second", b'"by a, stale"')
    await a2.send(stale)
    refused = await a2.expect(m.CheckpointRefused)
    assert (refused.seq, refused.run_id) == (stale.seq, lease_a.run_id)
    assert refused.reason
    run = await run_of(http, event_id)
    assert [(s["id"], s["output"]) for s in run["steps"]] == [("first", "by a")]

    await b.send(b.step_completed(lease_b.run_id, lease_b.fence, "second", b'"by b"'),
                 m.RunCompleted(seq=b.next_seq(), run_id=lease_b.run_id, fence=lease_b.fence,
                                output=b'"done"'))
    ack = await b.expect(m.CheckpointAck)
    assert ack.upto == 2
    assert b.of(m.CheckpointRefused) == []
    run = (await http.get(f"/v1/runs/{lease_b.run_id}")).json()
    assert run["status"] == "Completed"
    assert run["output"] == "done"
    assert {s["id"]: s["output"] for s in run["steps"]} == {"first": "by a", "second": "by b"}


async def test_a_silent_worker_s_lease_moves_on(gw, http, clock):
    a = await RawWorker.ready_on(gw.connect_port, instance_id="a")
    await post_event(http)
    lease_a = await a.expect(m.LeaseGranted)

    clock.advance(3 * HEARTBEAT + 1)
    code, _ = await a.wait_closed()
    assert code == 4000

    b = await RawWorker.ready_on(gw.connect_port, instance_id="b")
    lease_b = await b.expect(m.LeaseGranted)
    assert (lease_b.run_id, lease_b.fence) == (lease_a.run_id, lease_a.fence + 2)  # revoked, leased
    a2 = await RawWorker.ready_on(gw.connect_port, instance_id="a")
    await a2.send(m.RunCompleted(seq=a2.next_seq(), run_id=lease_a.run_id, fence=lease_a.fence,
                                 output=b'"stale"'))
    await a2.expect(m.CheckpointRefused)
    run = (await http.get(f"/v1/runs/{lease_a.run_id}")).json()
    assert (run["status"], run["output"]) == ("Running", None)


async def test_a_revoked_lease_s_checkpoint_is_refused_before_the_run_is_leased_again(gw, http):
    a = await RawWorker.ready_on(gw.connect_port, instance_id="a")
    event_id = await post_event(http)
    lease = await a.expect(m.LeaseGranted)
    await a.close()  # its lease is revoked; no other worker is there to take the run

    await run_of_id(http, lease.run_id, lambda run: run["status"] == "Queued")
    back = await RawWorker.open(gw.connect_port)
    await back.handshake(instance_id="a", apps=[app_manifest("elsewhere")])  # serves other work
    stale = back.step_completed(lease.run_id, lease.fence, "a", b'"after revocation"')
    await back.send(stale)
    ack = await back.expect(m.CheckpointAck)
    assert ack.upto == stale.seq
    assert [r.seq for r in back.of(m.CheckpointRefused)] == [stale.seq]
    assert (await run_of(http, event_id))["steps"] == []


async def test_a_run_that_loses_its_worker_ten_times_fails(gw, http):
    worker = await RawWorker.ready_on(gw.connect_port, instance_id="crashy-0")
    event_id = await post_event(http)
    run_id = None
    for attempt in range(10):
        if attempt:
            worker = await RawWorker.ready_on(gw.connect_port, instance_id=f"crashy-{attempt}")
        lease = await worker.expect(m.LeaseGranted)
        run_id = run_id or lease.run_id
        assert (lease.run_id, lease.fence) == (run_id, 2 * attempt + 1)  # lease, revoke
        await worker.close()

    async def failed():
        run = (await http.get(f"/v1/runs/{run_id}")).json()
        return run if run["status"] == "Failed" else None

    run = await eventually(failed, timeout=5, what="the run to fail")
    assert run["error"]["name"] == "LeaseLost"
    assert "10 times" in run["error"]["message"]
    assert "worker" in run["error"]["message"]
    assert run["ended_at"] is not None
    assert (await run_of(http, event_id))["id"] == run_id

    # Nobody gets it again: the next worker's first lease is the next event's run.
    late = await RawWorker.ready_on(gw.connect_port, instance_id="late")
    next_event = await post_event(http)
    lease = await late.expect(m.LeaseGranted)
    assert lease.run_id == (await run_of(http, next_event))["id"]
    assert (await http.get(f"/v1/runs/{run_id}")).json()["status"] == "Failed"



# --- values no store can hold ----------------------------------------------------------------


def _checkpoint(kind: str, run_id: str, fence: int, fields: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {"type": kind, "seq": 1, "run_id": run_id, "fence": fence}
    step: dict[str, Any] = {"step_id": "a", "attempt": 0, "started_at": 1.0, "ended_at": 2.0}
    error = {"name": "E", "message": "m", "stack": None}
    extra: dict[str, Any] = {
        "step_completed": {**step, "output": b"1"},
        "step_failed": {**step, "error": error, "final": False, "retry_after": None},
        "run_failed": {"attempt": 0, "error": error, "final": False, "retry_after": None},
        "lease_rejected": {"reason": "full"},
    }[kind]
    if kind == "lease_rejected":
        del base["seq"]
    return {**base, **extra, **fields}


UNSTORABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "a NaN retry_after": ("run_failed", {"retry_after": float("nan")}),
    "a NaN step retry_after": ("step_failed", {"retry_after": float("nan")}),
    "an infinite step time": ("step_completed", {"started_at": float("inf")}),
    "a NaN step time": ("step_completed", {"ended_at": float("nan")}),
    "an attempt over 64 bits": ("step_completed", {"attempt": 2**64 - 1}),
    "a fence over 64 bits": ("lease_rejected", {"fence": 2**63}),
}


@pytest.mark.parametrize("what", sorted(UNSTORABLE))
async def test_a_checkpoint_no_store_can_hold_is_a_bad_frame(gateway_factory, what):
    # The system clock: when a batch fails, the engine pauses on its clock before going on.
    gw = await gateway_factory()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        kind, fields = UNSTORABLE[what]
        await _unstorable(gw, http, kind, fields)


async def _unstorable(gw: Gateway, http: httpx.AsyncClient, kind: str,
                      fields: dict[str, Any]) -> None:
    worker = await RawWorker.ready_on(gw.connect_port)
    await post_event(http)
    lease = await worker.expect(m.LeaseGranted)
    await worker.send_raw(msgpack.packb([_checkpoint(kind, lease.run_id, lease.fence, fields)]))

    error = await worker.expect(m.Error)
    code, _ = await worker.wait_closed()
    assert error.code == "bad_frame"
    assert code == 1002
    r = await http.get(f"/v1/runs/{lease.run_id}")
    assert r.status_code == 200
    assert r.json()["steps"] == []
    assert "tether_batches_failed_total 0.0\n" in (await http.get("/metrics")).text
    await serves_a_good_worker(gw)


# --- a socket on its way out never stops the engine ------------------------------------------


async def gateway_still_commits(http: httpx.AsyncClient) -> None:
    """An event is still accepted: the engine, which every socket shares, is alive."""
    r = await asyncio.wait_for(http.post("/e/dev", json={"name": "still.alive"}), bound(5))
    assert r.status_code == 200


async def test_a_refused_worker_s_acks_do_not_stop_the_gateway(gw, http):
    worker = await RawWorker.ready_on(gw.connect_port)
    await post_event(http)
    lease = await worker.expect(m.LeaseGranted)
    # The worker stops reading, so the gateway's closing handshake waits on it, while the
    # checkpoint sent just before the bad frame commits and is acknowledged.
    worker.ws.transport.pause_reading()
    await worker.send(worker.step_completed(lease.run_id, lease.fence))
    await worker.send_raw(b"\xc1")

    await gateway_still_commits(http)
    run = await run_of_id(http, lease.run_id, lambda run: run["steps"])
    assert [s["id"] for s in run["steps"]] == ["a"]
    worker.ws.transport.resume_reading()
    await worker.wait_closed()
    await serves_a_good_worker(gw)


async def test_a_worker_that_sends_an_error_is_done(gw, http):
    worker = await RawWorker.ready_on(gw.connect_port)
    await worker.send(m.Error(code="internal_error", message="worker is broken"))
    code, _ = await worker.wait_closed()
    assert code is not None

    # Its session is over: the next run goes to a worker that can take it.
    event_id = await post_event(http)
    await gateway_still_commits(http)
    other = await RawWorker.ready_on(gw.connect_port, instance_id="healthy")
    lease = await other.expect(m.LeaseGranted)
    assert lease.run_id == (await run_of(http, event_id))["id"]


async def run_of_id(http: httpx.AsyncClient, run_id: str,
                    ready: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    async def check():
        run = (await http.get(f"/v1/runs/{run_id}")).json()
        return run if ready(run) else None

    return await eventually(check, timeout=5, what=f"run {run_id}")


# --- a frame of many messages ------------------------------------------------------------------


async def test_a_frame_s_checkpoints_and_other_messages_are_each_handled(gw, http):
    # The gateway hands a frame's checkpoints to the engine together; a heartbeat among them
    # is answered, and every checkpoint is committed and acknowledged in order.
    worker = await RawWorker.ready_on(gw.connect_port)
    await post_event(http)
    lease = await worker.expect(m.LeaseGranted)
    await worker.send(
        m.LeaseAccepted(run_id=lease.run_id, fence=lease.fence),
        worker.step_completed(lease.run_id, lease.fence, "a", b"1"),
        m.Heartbeat(in_flight=1),
        worker.step_completed(lease.run_id, lease.fence, "b", b"2"),
        m.RunCompleted(seq=worker.next_seq(), run_id=lease.run_id, fence=lease.fence,
                       output=b"3"),
    )
    await worker.expect(m.HeartbeatAck)

    async def all_acked() -> bool:
        while not any(a.upto == 3 for a in worker.of(m.CheckpointAck)):
            await worker.expect(m.CheckpointAck)
        return True

    await eventually(all_acked, timeout=5, what="the frame's three checkpoints acknowledged")
    run = await run_of_id(http, lease.run_id, lambda run: run["status"] == "Completed")
    assert [s["id"] for s in run["steps"]] == ["a", "b"]
    assert worker.of(m.CheckpointRefused) == []


async def test_a_hole_in_a_frame_s_checkpoints_closes_the_socket_after_those_before_it(gw, http):
    worker = await RawWorker.ready_on(gw.connect_port)
    await post_event(http)
    lease = await worker.expect(m.LeaseGranted)
    worker.ws.transport.pause_reading()  # the close waits; the first checkpoint commits
    first = worker.step_completed(lease.run_id, lease.fence, "a")
    worker.next_seq()  # checkpoint 2 goes missing
    await worker.send(first, worker.step_completed(lease.run_id, lease.fence, "b"))

    run = await run_of_id(http, lease.run_id, lambda run: run["steps"])
    assert [s["id"] for s in run["steps"]] == ["a"]
    worker.ws.transport.resume_reading()
    error = await worker.expect(m.Error)
    code, _ = await worker.wait_closed()
    assert error.code == "bad_frame" and code == 1002
    assert "checkpoint 3 arrived where 2 was due" in error.message
    await serves_a_good_worker(gw)
