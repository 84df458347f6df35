"""A worker that speaks the socket protocol by hand, one message at a time, for tests.

Nothing of the worker SDK is used: frames are built with :mod:`protocol.codec` (or raw bytes)
so a test can say exactly what goes on the wire, including what a real worker never would.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocol import messages as m
from protocol.auth import answer
from protocol.codec import decode, encode
from protocol.manifest import AppManifest, FunctionConfig, TriggerEvent
from tests.helpers.waiting import bound

M = TypeVar("M")

APP_ID = "raw"
FN_ID = "fn"
FUNCTION = f"{APP_ID}/{FN_ID}"
EVENT = "raw/go"


def app_manifest(app_id: str = APP_ID, *, if_: str | None = None) -> AppManifest:
    return AppManifest(id=app_id, version="1", functions=[
        FunctionConfig(id=FN_ID, triggers=[TriggerEvent(EVENT, if_=if_)])
    ])


def hello(instance_id: str = "raw-1", *, capacity: int = 1,
          apps: list[AppManifest] | None = None,
          version: int = m.PROTOCOL_VERSION) -> m.Hello:
    return m.Hello(protocol_version=version, instance_id=instance_id, sdk_version="test",
                   capacity=capacity, apps=apps or [app_manifest()])


class Closed(Exception):
    """The gateway closed the socket while we waited for a message."""


class RawWorker:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[m.Message] = []  # everything, in order
        self._unread: list[m.Message] = []
        self._challenge: m.Challenge | None = None
        self._ready: m.Ready | None = None
        self.seq = 0

    @classmethod
    async def open(cls, port: int) -> RawWorker:
        ws = await connect(f"ws://127.0.0.1:{port}/connect", ping_interval=None,
                           compression=None, max_size=None, close_timeout=1)
        worker = cls(ws)
        worker._challenge = await worker.expect(m.Challenge)
        return worker

    @classmethod
    async def ready_on(cls, port: int, *, key: str | None = None, **hello_args: Any) -> RawWorker:
        """Connect and complete the handshake."""
        worker = await cls.open(port)
        await worker.handshake(key=key, **hello_args)
        return worker

    async def handshake(self, *, key: str | None = None, **hello_args: Any) -> m.Ready:
        greeting = hello(**hello_args)
        await self.authenticate(key=key, instance_id=greeting.instance_id)
        await self.send(greeting)
        self._ready = await self.expect(m.Ready)
        return self._ready

    async def authenticate(self, *, key: str | None = None, instance_id: str = "raw-1",
                           mac: bytes | None = None) -> None:
        """Answer the challenge (with ``mac``, or one made with ``key``) and await the nod."""
        if mac is None:
            mac = answer(key or "", self.challenge.nonce, instance_id)
        await self.send(m.Answer(instance_id=instance_id, mac=mac))
        await self.expect(m.Authenticated)

    @property
    def challenge(self) -> m.Challenge:
        assert self._challenge is not None, "no challenge received"
        return self._challenge

    @property
    def ready(self) -> m.Ready:
        assert self._ready is not None, "no handshake done"
        return self._ready

    async def send(self, *messages: m.Message) -> None:
        await self.ws.send(encode(list(messages)))

    async def send_raw(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    async def receive(self, timeout: float = 5) -> m.Message:
        if not self._unread:
            try:
                frame = await asyncio.wait_for(self.ws.recv(), bound(timeout))
            except ConnectionClosed as exc:
                raise Closed(str(exc)) from exc
            messages = decode(frame)
            self.received += messages
            self._unread += messages
        return self._unread.pop(0)

    async def expect(self, kind: type[M], timeout: float = 5) -> M:
        """The next message of type ``kind``; others received meanwhile stay in ``received``."""
        async with asyncio.timeout(bound(timeout)):
            while True:
                msg = await self.receive(timeout)
                if isinstance(msg, kind):
                    return msg

    async def wait_closed(self, timeout: float = 5) -> tuple[int | None, str | None]:
        """Read until the gateway closes the socket; return its close code and reason."""
        async with asyncio.timeout(bound(timeout)):
            while True:
                try:
                    await self.receive(timeout)
                except Closed:
                    return self.ws.close_code, self.ws.close_reason

    def of(self, kind: type[M]) -> list[M]:
        return [msg for msg in self.received if isinstance(msg, kind)]

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def step_completed(self, run_id: str, fence: int, step_id: str = "a",
                       output: bytes = b'"ok"') -> m.StepCompleted:
        return m.StepCompleted(seq=self.next_seq(), run_id=run_id, fence=fence, step_id=step_id,
                               attempt=0, output=output, started_at=1.0, ended_at=2.0)

    async def close(self) -> None:
        await self.ws.close()
