"""worker.connection.Outbox: checkpoints stay until acknowledged, and go again, renumbered."""

from __future__ import annotations

from protocol import messages as m
from worker.connection import Outbox


def _emit(outbox: Outbox, run_id: str) -> None:
    outbox.emit(m.RunSuspended(seq=outbox.next_seq(), run_id=run_id, fence=1))


async def test_an_ack_lets_go_of_every_checkpoint_up_to_its_seq_and_no_further():
    outbox = Outbox()
    for i in range(5):
        _emit(outbox, f"r{i}")
    outbox.ack(3)
    assert list(outbox.unacked) == [4, 5] and not outbox.drained.is_set()
    outbox.ack(3)  # the same ack again changes nothing
    assert list(outbox.unacked) == [4, 5]
    outbox.ack(9)
    assert outbox.unacked == {} and outbox.drained.is_set()


async def test_after_a_reconnect_the_unacknowledged_go_again_from_seq_1_in_order():
    outbox = Outbox()
    for i in range(4):
        _emit(outbox, f"r{i}")
    outbox.ack(2)
    outbox.renumber()
    assert [(seq, c.run_id) for seq, c in outbox.unacked.items()] == [(1, "r2"), (2, "r3")]
    _emit(outbox, "r4")
    outbox.ack(2)
    assert [c.run_id for c in outbox.unacked.values()] == ["r4"]
    assert [c.seq for c in outbox.take() if isinstance(c, m.RunSuspended)] == [1, 2, 3]


async def test_an_ack_passes_over_a_number_never_emitted_and_past_the_last():
    outbox = Outbox()
    _emit(outbox, "r1")
    outbox.next_seq()  # 2: numbered, never emitted (its message could not be built)
    _emit(outbox, "r3")
    _emit(outbox, "r4")
    outbox.ack(3)
    assert list(outbox.unacked) == [4] and not outbox.drained.is_set()
    outbox.ack(2**62)  # beyond anything sent: every one sent, at once
    assert outbox.unacked == {} and outbox.drained.is_set()
    _emit(outbox, "r5")
    outbox.ack(4)  # an old ack again changes nothing
    assert list(outbox.unacked) == [5]
    outbox.ack(5)
    assert outbox.unacked == {}
