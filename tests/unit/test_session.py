"""protocol.session: two pure sessions talking through the codec, as h11's ConnectionPair does."""

from __future__ import annotations

import pytest

from protocol import messages as m
from protocol.codec import decode, encode
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.manifest import AppManifest, FunctionConfig
from protocol.session import Role, Session, State

HELLO = m.Hello(protocol_version=m.PROTOCOL_VERSION, instance_id="w1", sdk_version="0.1.0",
                capacity=10, apps=[AppManifest(id="shop", functions=[FunctionConfig(id="f")])])
CHALLENGE = m.Challenge(nonce=b"n" * 32, protocol_version=m.PROTOCOL_VERSION, gateway_id="gw")
ANSWER = m.Answer(instance_id="w1", mac=b"m" * 32)
AUTHENTICATED = m.Authenticated()
READY = m.Ready(session_id="s1", heartbeat_interval=5.0, lease_ttl=15.0, max_frame_size=1 << 20)
LEASE = m.LeaseGranted(run_id="r1", fence=1, function_id="shop/f", events=[b"{}"])
STEP = m.StepCompleted(seq=1, run_id="r1", fence=1, step_id="a", attempt=0, output=b"1",
                       started_at=1.0, ended_at=2.0)


class Pair:
    """A gateway-role and a worker-role session joined by the codec."""

    def __init__(self) -> None:
        self.gateway = Session(Role.GATEWAY)
        self.worker = Session(Role.WORKER)

    def peer(self, session: Session) -> Session:
        return self.worker if session is self.gateway else self.gateway

    def send(self, sender: Session, *messages: m.Message) -> list[m.Message]:
        """Send through ``sender``, carry the bytes, receive at the other end."""
        data = encode([sender.send(msg) for msg in messages])
        received = decode(data)
        for msg in received:
            self.peer(sender).receive(msg)
        return received

    def states(self) -> tuple[State, State]:
        return self.gateway.state, self.worker.state

    def handshake(self) -> None:
        self.send(self.gateway, CHALLENGE)
        self.send(self.worker, ANSWER)
        self.send(self.gateway, AUTHENTICATED)
        self.send(self.worker, HELLO)
        self.send(self.gateway, READY)


@pytest.fixture
def pair() -> Pair:
    return Pair()


@pytest.fixture
def ready(pair: Pair) -> Pair:
    pair.handshake()
    return pair


def test_handshake_step_by_step(pair):
    assert pair.states() == (State.NEW, State.NEW)
    assert not pair.gateway.accepts_leases
    pair.send(pair.gateway, CHALLENGE)
    assert pair.states() == (State.CHALLENGED, State.CHALLENGED)
    pair.send(pair.worker, ANSWER)
    assert pair.states() == (State.ANSWERED, State.ANSWERED)
    pair.send(pair.gateway, AUTHENTICATED)
    assert pair.states() == (State.AUTHENTICATED, State.AUTHENTICATED)
    pair.send(pair.worker, HELLO)
    assert pair.states() == (State.HELLO_SENT, State.HELLO_SENT)
    assert not pair.gateway.accepts_leases
    pair.send(pair.gateway, READY)
    assert pair.states() == (State.READY, State.READY)
    assert pair.gateway.accepts_leases


def test_the_manifest_may_not_travel_with_the_answer(pair):
    """The key is proven on a small frame before the gateway reads anything large."""
    gateway = Session(Role.GATEWAY)
    gateway.send(CHALLENGE)
    frame = decode(encode([ANSWER, HELLO]))
    gateway.receive(frame[0])
    with pytest.raises(RemoteProtocolError, match="'hello' received in state 'answered'"):
        gateway.receive(frame[1])


def test_send_returns_the_message(pair):
    assert pair.gateway.send(CHALLENGE) is CHALLENGE


def test_leases_checkpoints_and_acks(ready):
    ready.send(ready.gateway, LEASE)
    ready.send(ready.worker, m.LeaseAccepted(run_id="r1", fence=1))
    ready.send(ready.worker, STEP,
               m.StepFailed(seq=2, run_id="r1", fence=1, step_id="b", attempt=0,
                            error=m.ErrorInfo(name="E", message="x"), final=False,
                            started_at=1.0, ended_at=2.0),
               m.RunSuspended(seq=3, run_id="r1", fence=1))
    ready.send(ready.gateway, m.CheckpointAck(upto=3))
    ready.send(ready.gateway, m.LeaseGranted(run_id="r2", fence=1, function_id="shop/f",
                                             events=[]))
    ready.send(ready.worker, m.LeaseRejected(run_id="r2", fence=1, reason="full"))
    ready.send(ready.gateway, LEASE)
    ready.send(ready.worker, m.RunCompleted(seq=4, run_id="r1", fence=1, output=b"null"),
               m.RunFailed(seq=5, run_id="r3", fence=1, attempt=0,
                           error=m.ErrorInfo(name="E", message="x"), final=True),
               m.LeaseReleased(seq=6, run_id="r4", fence=1, reason="bye"))
    ready.send(ready.gateway, m.CheckpointRefused(seq=5, run_id="r3", reason="lease lost"),
               m.LeaseRevoked(run_id="r1", fence=1, reason="cancelled"))
    assert ready.states() == (State.READY, State.READY)


def test_heartbeat_and_ack(ready):
    ready.send(ready.worker, m.Heartbeat(in_flight=2))
    ready.send(ready.gateway, m.HeartbeatAck())
    assert ready.states() == (State.READY, State.READY)


def test_go_away_keeps_the_socket_live(ready):
    ready.send(ready.gateway, m.GoAway(reason="restart"))
    ready.send(ready.worker, STEP)
    assert ready.states() == (State.READY, State.READY)


def test_drain(ready):
    ready.send(ready.worker, m.Drain())
    assert ready.states() == (State.DRAINING, State.DRAINING)
    assert not ready.gateway.accepts_leases
    # In-flight work still reports, and the gateway still answers it.
    ready.send(ready.worker, STEP, m.Heartbeat())
    ready.send(ready.gateway, m.CheckpointAck(upto=1), m.HeartbeatAck(),
               m.LeaseRevoked(run_id="r1", fence=1, reason="x"), m.GoAway(reason="y"))
    ready.send(ready.worker, m.LeaseReleased(seq=2, run_id="r1", fence=1, reason="draining"))
    assert ready.states() == (State.DRAINING, State.DRAINING)


def test_gateway_may_not_send_a_lease_while_draining(ready):
    ready.send(ready.worker, m.Drain())
    with pytest.raises(LocalProtocolError, match="'lease_granted' sent in state 'draining'"):
        ready.gateway.send(LEASE)
    assert ready.gateway.state is State.DRAINING


def test_draining_worker_tolerates_a_lease_already_in_flight(ready):
    ready.worker.send(m.Drain())  # not yet received by the gateway
    lease = ready.gateway.send(LEASE)  # the gateway still thinks READY
    ready.worker.receive(lease)
    assert ready.worker.state is State.DRAINING
    ready.worker.send(m.LeaseRejected(run_id="r1", fence=1, reason="draining"))
    ready.gateway.receive(m.Drain())
    ready.gateway.receive(m.LeaseRejected(run_id="r1", fence=1, reason="draining"))
    assert ready.states() == (State.DRAINING, State.DRAINING)


def test_draining_gateway_refuses_a_lease_from_the_worker(ready):
    # The in-flight allowance is for a worker hearing from the gateway; a worker never
    # sends lease_granted, draining or not.
    ready.send(ready.worker, m.Drain())
    with pytest.raises(RemoteProtocolError, match="lease_granted"):
        ready.gateway.receive(LEASE)


# --- out of place, received: the peer's fault ------------------------------------------


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ([], HELLO),  # hello before any challenge
        ([CHALLENGE], HELLO),  # hello before the answer
        ([CHALLENGE], STEP),  # checkpoint before ready
        ([CHALLENGE, ANSWER], HELLO),  # hello before the gateway accepted the answer
        ([CHALLENGE, ANSWER, AUTHENTICATED, HELLO], HELLO),  # hello twice
        ([CHALLENGE, ANSWER, AUTHENTICATED, HELLO], m.Heartbeat()),  # heartbeat before ready
        ([CHALLENGE, ANSWER, AUTHENTICATED, HELLO], LEASE),  # a gateway message, from worker
        ([CHALLENGE, ANSWER, AUTHENTICATED, HELLO, READY], HELLO),  # hello after ready
        ([CHALLENGE, ANSWER, AUTHENTICATED, HELLO, READY], m.HeartbeatAck()),
    ],
    ids=["hello-first", "hello-before-answer", "checkpoint-early", "hello-unauthenticated",
         "hello-twice", "heartbeat-early", "lease-from-worker", "hello-after-ready",
         "ack-from-worker"],
)
def test_gateway_refuses_out_of_place_messages(setup, message):
    session = Session(Role.GATEWAY)
    for msg in setup:
        (session.receive if isinstance(msg, (m.Hello, m.Answer)) else session.send)(msg)
    before = session.state
    with pytest.raises(RemoteProtocolError, match=f"'{message.type}' received in state"):
        session.receive(message)
    assert session.state is before


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ([], READY),  # ready before challenge
        ([], LEASE),
        ([CHALLENGE], CHALLENGE),  # challenge twice
        ([CHALLENGE, ANSWER], READY),  # ready before authenticated and hello
        ([CHALLENGE, ANSWER, AUTHENTICATED, HELLO], LEASE),  # lease before ready
        ([CHALLENGE, ANSWER, AUTHENTICATED, HELLO], m.CheckpointAck(upto=1)),
        ([CHALLENGE, ANSWER, AUTHENTICATED, HELLO, READY], READY),  # ready twice
        ([CHALLENGE, ANSWER, AUTHENTICATED, HELLO, READY], m.Drain()),  # a worker message
    ],
    ids=["ready-first", "lease-first", "challenge-twice", "ready-unauthenticated",
         "lease-early", "ack-early", "ready-twice", "drain-from-gateway"],
)
def test_worker_refuses_out_of_place_messages(setup, message):
    session = Session(Role.WORKER)
    for msg in setup:
        (session.send if isinstance(msg, (m.Hello, m.Answer)) else session.receive)(msg)
    before = session.state
    with pytest.raises(RemoteProtocolError, match=f"'{message.type}' received in state"):
        session.receive(message)
    assert session.state is before


# --- out of place, sent: our own bug ---------------------------------------------------


def test_lease_before_ready_is_a_local_error(pair):
    pair.send(pair.gateway, CHALLENGE)
    pair.send(pair.worker, ANSWER)
    pair.send(pair.gateway, AUTHENTICATED)
    pair.send(pair.worker, HELLO)
    with pytest.raises(LocalProtocolError, match="'lease_granted' sent in state 'hello_sent'"):
        pair.gateway.send(LEASE)
    assert pair.gateway.state is State.HELLO_SENT


def test_hello_before_authenticated_is_a_local_error(pair):
    pair.send(pair.gateway, CHALLENGE)
    pair.send(pair.worker, ANSWER)
    with pytest.raises(LocalProtocolError, match="'hello' sent in state 'answered'"):
        pair.worker.send(HELLO)


def test_hello_twice_is_a_local_error(pair):
    pair.send(pair.gateway, CHALLENGE)
    pair.send(pair.worker, ANSWER)
    pair.send(pair.gateway, AUTHENTICATED)
    pair.send(pair.worker, HELLO)
    with pytest.raises(LocalProtocolError, match="'hello' sent"):
        pair.worker.send(HELLO)


def test_checkpoint_before_ready_is_a_local_error(pair):
    pair.send(pair.gateway, CHALLENGE)
    pair.send(pair.worker, ANSWER)
    with pytest.raises(LocalProtocolError, match="'step_completed' sent in state"):
        pair.worker.send(STEP)


def test_hello_before_challenge_is_a_local_error(pair):
    with pytest.raises(LocalProtocolError):
        pair.worker.send(HELLO)
    assert pair.worker.state is State.NEW


def test_roles_do_not_send_each_others_messages(ready):
    with pytest.raises(LocalProtocolError):
        ready.gateway.send(m.Heartbeat())
    with pytest.raises(LocalProtocolError):
        ready.worker.send(m.HeartbeatAck())
    with pytest.raises(LocalProtocolError):
        ready.worker.send(LEASE)


def test_local_errors_are_not_remote_errors(pair):
    with pytest.raises(LocalProtocolError) as info:
        pair.gateway.send(LEASE)
    assert not isinstance(info.value, RemoteProtocolError)


# --- error always closes ---------------------------------------------------------------

_ERROR = m.Error(code="bad_frame", message="bye")


def _sessions_in_every_state() -> list[tuple[str, Pair]]:
    """Pairs driven to each state of the conversation."""
    out = []
    steps: list[tuple[str, list[tuple[str, m.Message]]]] = [
        ("new", []),
        ("challenged", [("gateway", CHALLENGE)]),
        ("answered", [("gateway", CHALLENGE), ("worker", ANSWER)]),
        ("authenticated", [("gateway", CHALLENGE), ("worker", ANSWER),
                           ("gateway", AUTHENTICATED)]),
        ("hello_sent", [("gateway", CHALLENGE), ("worker", ANSWER), ("gateway", AUTHENTICATED),
                        ("worker", HELLO)]),
        ("ready", [("gateway", CHALLENGE), ("worker", ANSWER), ("gateway", AUTHENTICATED),
                   ("worker", HELLO), ("gateway", READY)]),
        ("draining", [("gateway", CHALLENGE), ("worker", ANSWER), ("gateway", AUTHENTICATED),
                      ("worker", HELLO), ("gateway", READY), ("worker", m.Drain())]),
    ]
    for name, script in steps:
        pair = Pair()
        for side, msg in script:
            pair.send(getattr(pair, side), msg)
        assert pair.gateway.state.value == name
        out.append((name, pair))
    return out


@pytest.mark.parametrize("index", range(7))
@pytest.mark.parametrize("sender", ["gateway", "worker"])
def test_error_closes_from_any_state(index, sender):
    _, pair = _sessions_in_every_state()[index]
    pair.send(getattr(pair, sender), _ERROR)
    assert pair.states() == (State.CLOSED, State.CLOSED)


def test_nothing_but_error_after_close(ready):
    ready.send(ready.worker, _ERROR)
    with pytest.raises(LocalProtocolError):
        ready.worker.send(m.Heartbeat())
    with pytest.raises(LocalProtocolError):
        ready.gateway.send(m.HeartbeatAck())
    with pytest.raises(RemoteProtocolError):
        ready.gateway.receive(m.Heartbeat())
    with pytest.raises(RemoteProtocolError):
        ready.worker.receive(LEASE)
    ready.gateway.send(_ERROR)
    ready.worker.receive(_ERROR)
    assert ready.states() == (State.CLOSED, State.CLOSED)
