"""The worker's view of the gateway's liveness, with an injected clock (no sockets, no sleeps)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from worker.connection import GatewayLink, Outbox


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def link():
    clock = FakeTime()
    aborted: list[bool] = []
    gl = GatewayLink(
        ["ws://127.0.0.1:1/connect"], hello=lambda: None, signing_key=None,  # type: ignore[arg-type,return-value]
        on_message=lambda m: None, on_ready=lambda r: None, on_disconnect=lambda r: None,
        outbox=Outbox(), in_flight=lambda: 0, monotonic=clock,
    )
    gl.ws = SimpleNamespace(transport=SimpleNamespace(abort=lambda: aborted.append(True)))  # type: ignore[assignment]
    gl.connected.set()
    gl._deaf_after = 2.5  # heartbeat interval 1 s
    gl._last_heard = gl._last_tick = clock.now
    return gl, clock, aborted


def test_a_gateway_heard_from_lately_is_alive(link):
    gl, clock, aborted = link
    clock.now += 2.4
    assert gl.presumed_deaf() is False
    assert aborted == []


def test_a_gateway_silent_for_two_and_a_half_intervals_is_presumed_deaf(link):
    gl, clock, aborted = link
    clock.now += 2.6
    gl._last_tick = clock.now  # the heartbeat task kept running: the gateway is the silent one
    assert gl.presumed_deaf() is True
    assert aborted == [True]  # the socket is dropped: its leases are presumed lost


def test_a_frozen_worker_is_not_fooled_by_frames_buffered_before_the_freeze(link):
    gl, clock, aborted = link
    clock.now += 10  # SIGSTOP for 10 s, then SIGCONT
    gl._last_heard = clock.now  # a heartbeat ack buffered before the freeze is read first
    assert gl.presumed_deaf() is True  # but the heartbeat task stalled as long: drop it
    assert aborted == [True]


def test_without_a_socket_nothing_is_presumed(link):
    gl, clock, aborted = link
    gl.connected.clear()
    clock.now += 100
    assert gl.presumed_deaf() is False
    assert aborted == []
