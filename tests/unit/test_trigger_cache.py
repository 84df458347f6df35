"""The writer's trigger payloads of runs not leased yet: bounded by bytes, oldest out first."""

from __future__ import annotations

from gateway.store.transaction import Triggers


def test_a_payload_is_given_back_once():
    triggers = Triggers()
    triggers.add("r1", b"{}")
    assert "r1" in triggers
    assert triggers.pop("r1") == b"{}"
    assert "r1" not in triggers and triggers.pop("r1") is None


def test_the_oldest_payloads_go_first_past_the_bound():
    triggers = Triggers(max_bytes=10)
    for index in range(5):
        triggers.add(f"r{index}", b"abcd")  # 4 bytes each: two fit
    assert [f"r{i}" in triggers for i in range(5)] == [False, False, False, True, True]
    assert triggers.pop("r3") == b"abcd"
    triggers.add("big", b"x" * 11)  # larger than the bound: kept by no one
    assert "big" not in triggers and "r4" not in triggers


def test_a_run_added_again_counts_once():
    triggers = Triggers(max_bytes=8)
    triggers.add("r1", b"abcd")
    triggers.add("r1", b"abcd")
    triggers.add("r2", b"abcd")
    assert "r1" in triggers and "r2" in triggers
