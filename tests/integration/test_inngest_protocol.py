"""The connect protocol of ``--inngest``, driven by hand with the pinned SDK's own protobuf
messages: bootstrap and auth, handshake, heartbeats, lease extension, reply acks, the flush
fallback (a reply applied once whichever way it came), cancellation and GATEWAY_CLOSING.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from gateway.app import Gateway
from gateway.config import Settings
from tests.helpers.waiting import eventually

pb = pytest.importorskip("inngest.connect._internal.connect_pb2")

#: A signing key in Inngest's form (the SDKs hex-decode what follows the prefix).
RAW_KEY = "5e2b8f0c9d1a4e7f3b6c8d0e2f4a6b8c1d3e5f7a9b0c2d4e6f8a1b3c5d7e9f0a"
HEX_KEY = f"signkey-test-{RAW_KEY}"
KIND = pb.GatewayMessageType


def functions(*extra: dict[str, Any]) -> bytes:
    return json.dumps([{
        "id": "fake-work", "name": "work", "triggers": [{"event": "fake/work"}],
        "steps": {"step": {"id": "step", "name": "step", "retries": {"attempts": 2},
                           "runtime": {"type": "ws", "url": "ws://connect"}}},
        **(extra[0] if extra else {}),
    }]).encode()


class FakeSDK:
    """The SDK's side of one connection, frame by frame."""

    def __init__(self, gw: Gateway, http: httpx.AsyncClient) -> None:
        self.gw = gw
        self.http = http
        self.ws: Any = None

    async def start(self, headers: dict[str, str] | None = None) -> Any:
        res = await self.http.post("/v0/connect/start",
                                   content=pb.StartRequest().SerializeToString(),
                                   headers=headers or {})
        assert res.status_code == 200, res.text
        start = pb.StartResponse()
        start.ParseFromString(res.content)
        return start

    async def connect(self, token: str | None = None, fns: bytes | None = None,
                      manual_ready: bool = False) -> Any:
        start = await self.start()
        assert start.gateway_endpoint.endswith("/v0/connect")
        self.ws = await websockets.connect(start.gateway_endpoint,
                                           subprotocols=["v0.connect.inngest.com"])
        assert self.ws.subprotocol == "v0.connect.inngest.com"
        assert (await self.recv()).kind == KIND.GATEWAY_HELLO
        await self.send(KIND.WORKER_CONNECT, pb.WorkerConnectRequestData(
            connection_id=start.connection_id, instance_id="fake-1",
            auth_data=pb.AuthData(session_token=token or start.session_token,
                                  sync_token=start.sync_token),
            apps=[pb.AppConfiguration(app_name="fake", functions=fns or functions())],
            sdk_language="test", sdk_version="0", max_worker_concurrency=4,
            worker_manual_readiness_ack=manual_ready))
        return await self.recv()

    async def send(self, kind: int, payload: Any = None) -> None:
        data = b"" if payload is None else payload.SerializeToString()
        await self.ws.send(pb.ConnectMessage(kind=kind, payload=data).SerializeToString())

    async def recv(self) -> Any:
        msg = pb.ConnectMessage()
        msg.ParseFromString(await self.ws.recv())
        return msg

    async def expect(self, kind: int) -> Any:
        while True:
            msg = await self.recv()
            if msg.kind == kind:
                return msg

    async def request(self) -> Any:
        msg = await self.expect(KIND.GATEWAY_EXECUTOR_REQUEST)
        req = pb.GatewayExecutorRequestData()
        req.ParseFromString(msg.payload)
        return req


@pytest.fixture
async def inngest(gateway_factory: Any) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    gw = await gateway_factory(inngest=True)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        yield gw, http


async def run_status(http: httpx.AsyncClient, event_id: str) -> dict[str, Any]:
    runs = (await http.get(f"/v1/events/{event_id}/runs")).json()["data"]
    run: dict[str, Any] = runs[0] if runs else {}
    return run


async def send(http: httpx.AsyncClient, name: str) -> str:
    res = await http.post("/e/dev", json={"name": name, "data": {}})
    event_id: str = res.json()["ids"][0]
    return event_id


async def test_a_run_through_requests_extensions_acks_and_the_flush_fallback(
        inngest: tuple[Gateway, httpx.AsyncClient]) -> None:
    gw, http = inngest
    sdk = FakeSDK(gw, http)
    ready = await sdk.connect()
    assert ready.kind == KIND.GATEWAY_CONNECTION_READY
    data = pb.GatewayConnectionReadyData()
    data.ParseFromString(ready.payload)
    assert data.extend_lease_interval == "5s"  # whole seconds: Python reads no other format
    await sdk.send(KIND.WORKER_HEARTBEAT)
    assert (await sdk.recv()).kind == KIND.GATEWAY_HEARTBEAT

    event_id = await send(http, "fake/work")
    req = await sdk.request()
    assert req.function_slug == "fake-work" and req.step_id == "step"
    body = json.loads(req.request_payload)
    assert body["steps"] == {} and body["ctx"]["attempt"] == 0
    assert body["ctx"]["max_attempts"] == 3 and body["use_api"] is False
    assert body["event"]["name"] == "fake/work"

    await sdk.send(KIND.WORKER_REQUEST_EXTEND_LEASE, pb.WorkerRequestExtendLeaseData(
        request_id=req.request_id, lease_id=req.lease_id, run_id=req.run_id))
    ack = pb.WorkerRequestExtendLeaseAckData()
    ack.ParseFromString((await sdk.expect(KIND.WORKER_REQUEST_EXTEND_LEASE_ACK)).payload)
    assert ack.new_lease_id and ack.new_lease_id != req.lease_id

    # The step's reply arrives by the flush fallback and then again on the socket: applied
    # once (one next request, one attempt recorded), acked both ways.
    step_a = {"id": hashlib.sha1(b"a").hexdigest(), "op": "StepRun", "data": 1,
              "displayName": "a", "userland": {"id": "a"}}
    reply = pb.SDKResponse(request_id=req.request_id, status=pb.SDKResponseStatus.NOT_COMPLETED,
                           body=json.dumps([step_a]).encode())
    res = await http.post("/v0/connect/flush", content=reply.SerializeToString())
    assert res.status_code == 200
    flushed = pb.FlushResponse()
    flushed.ParseFromString(res.content)
    assert flushed.request_id == req.request_id
    await sdk.send(KIND.WORKER_REPLY, reply)
    frames = [await sdk.recv(), await sdk.recv()]  # the next request and the ack, any order
    assert sorted(f.kind for f in frames) == [KIND.GATEWAY_EXECUTOR_REQUEST,
                                              KIND.WORKER_REPLY_ACK]
    second = pb.GatewayExecutorRequestData()
    second.ParseFromString(next(f.payload for f in frames
                                if f.kind == KIND.GATEWAY_EXECUTOR_REQUEST))
    assert json.loads(second.request_payload)["steps"] == {step_a["id"]: {"data": 1}}
    await sdk.send(KIND.WORKER_REPLY, pb.SDKResponse(request_id=second.request_id,
                                               status=pb.SDKResponseStatus.DONE,
                                               body=b'{"ok": true}'))
    run = await eventually(lambda: _final(http, event_id), what="the run ended")
    assert run["status"] == "Completed" and run["output"] == {"ok": True}
    assert [(s["id"], s["attempts"]) for s in run["steps"]] == [("a", 1)]
    await sdk.ws.close()


async def _final(http: httpx.AsyncClient, event_id: str) -> dict[str, Any] | None:
    run = await run_status(http, event_id)
    return run if run.get("status") in ("Completed", "Failed", "Cancelled") else None


async def test_an_sdk_that_acks_its_readiness_gets_no_request_before_worker_ready(
        inngest: tuple[Gateway, httpx.AsyncClient]) -> None:
    """TypeScript sets worker_manual_readiness_ack and drops a request that arrives before
    its WORKER_READY ("unexpected message type during setup"): the run waits for it."""
    gw, http = inngest
    sdk = FakeSDK(gw, http)
    assert (await sdk.connect(manual_ready=True)).kind == KIND.GATEWAY_CONNECTION_READY
    # A run is leased in the commit that creates it (answered after): not to this SDK yet.
    event_id = await send(http, "fake/work")
    assert (await run_status(http, event_id))["status"] == "Queued"
    await sdk.send(KIND.WORKER_HEARTBEAT)
    assert (await sdk.recv()).kind == KIND.GATEWAY_HEARTBEAT  # and no request before it
    await sdk.send(KIND.WORKER_READY)
    req = await sdk.request()
    assert req.function_slug == "fake-work"


async def test_a_cancelled_run_refuses_its_next_lease_extension(
        inngest: tuple[Gateway, httpx.AsyncClient]) -> None:
    gw, http = inngest
    sdk = FakeSDK(gw, http)
    await sdk.connect()
    await send(http, "fake/work")
    req = await sdk.request()
    assert (await http.post(f"/v1/runs/{req.run_id}/cancel")).status_code == 200
    await sdk.send(KIND.WORKER_REQUEST_EXTEND_LEASE, pb.WorkerRequestExtendLeaseData(
        request_id=req.request_id, lease_id=req.lease_id, run_id=req.run_id))
    ack = pb.WorkerRequestExtendLeaseAckData()
    ack.ParseFromString((await sdk.expect(KIND.WORKER_REQUEST_EXTEND_LEASE_ACK)).payload)
    assert ack.new_lease_id == ""  # the SDK abandons the request
    await sdk.ws.close()


async def test_a_wrong_session_token_is_refused(
        inngest: tuple[Gateway, httpx.AsyncClient]) -> None:
    gw, http = inngest
    sdk = FakeSDK(gw, http)
    failed = await sdk.connect(token="forged")
    assert failed.kind == KIND.SYNC_FAILED
    error = pb.SystemError()
    error.ParseFromString(failed.payload)
    assert "session token" in error.message
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await sdk.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_an_option_tether_cannot_honour_is_refused_by_name(
        inngest: tuple[Gateway, httpx.AsyncClient]) -> None:
    gw, http = inngest
    sdk = FakeSDK(gw, http)
    failed = await sdk.connect(fns=functions({"concurrency": [{"limit": 1,
                                                               "scope": "account"}]}))
    assert failed.kind == KIND.SYNC_FAILED
    error = pb.SystemError()
    error.ParseFromString(failed.payload)
    assert "concurrency scope 'account'" in error.message
    assert (await http.get("/v1/functions")).json()["data"] == []


async def test_the_gateway_stopping_sends_gateway_closing(tmp_path: Path) -> None:
    gw = Gateway(Settings(host="127.0.0.1", port=0, connect_port=0, dev=True, inngest=True,
                          db=f"sqlite:///{tmp_path / 't.db'}", go_away_grace=0.5))
    await gw.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        sdk = FakeSDK(gw, http)
        await sdk.connect()
        stopping = asyncio.ensure_future(gw.stop())
        assert (await sdk.expect(KIND.GATEWAY_CLOSING)).kind == KIND.GATEWAY_CLOSING
        await sdk.ws.close()
        await stopping


@pytest.mark.parametrize("form", ["python", "typescript"])
async def test_start_takes_the_signing_key_hash_in_both_sdk_forms(
        gateway_factory: Any, form: str) -> None:
    gw = await gateway_factory(inngest=True, dev=False, signing_keys=[HEX_KEY])
    digest = hashlib.sha256(bytes.fromhex(RAW_KEY)).hexdigest()
    token = digest if form == "python" else f"signkey-test-{digest}"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        sdk = FakeSDK(gw, http)
        await sdk.start({"Authorization": f"Bearer {token}"})
        for bad in ({}, {"Authorization": "Bearer " + "0" * 64},
                    {"Authorization": f"Bearer {HEX_KEY}"}):
            res = await http.post("/v0/connect/start", content=b"", headers=bad)
            assert res.status_code == 401, (bad, res.text)
            assert "signing key" in res.json()["error"]
        res = await http.post("/v0/connect/flush", content=b"")
        assert res.status_code == 401


@pytest.mark.parametrize(("op", "reason"), [
    ({"op": "AIGateway"}, "not supported by Tether"),
    ({"op": "WaitForEvent", "name": "bad\x00name", "opts": {"timeout": "1m"}},
     "cannot be recorded"),
])
async def test_a_reply_tether_cannot_apply_fails_the_run_with_the_reason(
        inngest: tuple[Gateway, httpx.AsyncClient], op: dict[str, Any], reason: str) -> None:
    gw, http = inngest
    sdk = FakeSDK(gw, http)
    await sdk.connect()
    event_id = await send(http, "fake/work")
    req = await sdk.request()
    ops = [{"id": hashlib.sha1(b"x").hexdigest(), "displayName": "x", **op}]
    await sdk.send(KIND.WORKER_REPLY, pb.SDKResponse(
        request_id=req.request_id, status=pb.SDKResponseStatus.NOT_COMPLETED,
        body=json.dumps(ops).encode()))
    run = await eventually(lambda: _final(http, event_id), what="the run ended")
    assert run["status"] == "Failed"
    assert run["error"]["name"] == "InngestBridgeError" and reason in run["error"]["message"]
    workers = (await http.get("/v1/workers")).json()["data"]
    assert [w["in_flight"] for w in workers] == [0]
    await sdk.ws.close()


async def test_steps_streamed_during_a_request_are_committed_before_the_answer(
        inngest: tuple[Gateway, httpx.AsyncClient]) -> None:
    """TypeScript v4's ``/v1/checkpoint/{run}/async``: named by the request's ``qi_id``."""
    gw, http = inngest
    sdk = FakeSDK(gw, http)
    await sdk.connect()
    event_id = await send(http, "fake/work")
    req = await sdk.request()
    ctx = json.loads(req.request_payload)["ctx"]
    assert ctx["fn_id"] == "fake/work" and ctx["qi_id"]
    step_a = {"id": hashlib.sha1(b"a").hexdigest(), "op": "StepRun", "data": 1,
              "displayName": "a", "userland": {"id": "a"}}
    stale = await http.post(f"/v1/checkpoint/{req.run_id}/async",
                            json={"qi_id": "someone-else", "steps": [step_a]})
    assert stale.status_code == 409
    res = await http.post(f"/v1/checkpoint/{req.run_id}/async",
                          json={"qi_id": ctx["qi_id"], "steps": [step_a]})
    assert res.status_code == 200
    run = await run_status(http, event_id)
    assert [(s["id"], s["status"]) for s in run["steps"]] == [("a", "Completed")]
    # The reply repeats the streamed step, then the output: the step is not recorded twice.
    await sdk.send(KIND.WORKER_REPLY, pb.SDKResponse(
        request_id=req.request_id, status=pb.SDKResponseStatus.NOT_COMPLETED,
        body=json.dumps([step_a, {"id": hashlib.sha1(b"complete").hexdigest(),
                                  "op": "RunComplete", "data": {"ok": 1}}]).encode()))
    done = await eventually(lambda: _final(http, event_id), what="the run ended")
    assert done["status"] == "Completed" and done["output"] == {"ok": 1}
    assert [(s["id"], s["attempts"]) for s in done["steps"]] == [("a", 1)]
    await sdk.ws.close()


async def test_garbage_and_oversize_frames_before_the_token_close_only_that_socket(
        inngest: tuple[Gateway, httpx.AsyncClient]) -> None:
    gw, http = inngest
    endpoint = f"ws://127.0.0.1:{gw.connect_port}/v0/connect"
    for frame, code in ((b"\xff\xff\xff garbage", 1008), (b"\x00" * (2 * 1024 * 1024), 1009)):
        async with websockets.connect(endpoint, subprotocols=["v0.connect.inngest.com"],
                                      max_size=None) as ws:
            await ws.recv()  # GATEWAY_HELLO
            await ws.send(frame)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    sdk = FakeSDK(gw, http)  # the gateway still serves everyone else
    assert (await sdk.connect()).kind == KIND.GATEWAY_CONNECTION_READY
    await sdk.ws.close()
