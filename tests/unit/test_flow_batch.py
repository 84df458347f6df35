"""gateway.flow.batch: per-key batches cut by size or by timeout, in arrival order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.flow.batch import BatchConfig, OpenBatch, due, on_event


def feed(config: BatchConfig, events: list[tuple[float, str]],
         batch: OpenBatch | None = None) -> tuple[list[tuple[str, ...]], OpenBatch | None]:
    started: list[tuple[str, ...]] = []
    for now, event_id in events:
        step = on_event(batch, event_id, now, config)
        started.extend(step.start)
        batch = step.open
    return started, batch


def test_full_batch_starts_at_once_in_arrival_order() -> None:
    config = BatchConfig(max_size=3, timeout=60.0)
    started, batch = feed(config, [(0.0, "a"), (1.0, "b"), (2.0, "c"), (3.0, "d")])
    assert started == [("a", "b", "c")] and batch == OpenBatch(3.0, ("d",))


def test_batch_cut_by_timeout() -> None:
    config = BatchConfig(max_size=10, timeout=5.0)
    started, batch = feed(config, [(0.0, "a"), (4.999, "b")])
    assert started == [] and batch is not None
    assert batch.deadline(config) == 5.0
    assert not due(batch, 4.999, config) and due(batch, 5.0, config)
    # An event at the deadline does not join the closing batch: it opens the next one.
    started, batch = feed(config, [(5.0, "c")], batch)
    assert started == [("a", "b")] and batch == OpenBatch(5.0, ("c",))


def test_timeout_counts_from_the_first_event_not_the_last() -> None:
    config = BatchConfig(max_size=100, timeout=10.0)
    _, batch = feed(config, [(float(t), f"e{t}") for t in range(10)])
    assert batch is not None and batch.deadline(config) == 10.0


def test_a_due_batch_and_a_full_one_start_oldest_first() -> None:
    config = BatchConfig(max_size=1, timeout=5.0)
    step = on_event(OpenBatch(0.0, ("old",)), "new", 9.0, config)
    assert step.start == (("old",), ("new",)) and step.open is None


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="max_size >= 1"):
        BatchConfig(max_size=0, timeout=1.0)
    with pytest.raises(ValueError, match="timeout > 0"):
        BatchConfig(max_size=2, timeout=0.0)


@given(gaps=st.lists(st.sampled_from([0.0, 0.5, 2.0, 5.0, 9.0]), min_size=1, max_size=60),
       max_size=st.integers(1, 7))
def test_every_event_lands_in_one_batch_in_arrival_order(gaps: list[float], max_size: int) -> None:
    config = BatchConfig(max_size=max_size, timeout=5.0)
    events, now, times = [], 0.0, {}
    for i, gap in enumerate(gaps):
        now += gap
        events.append((now, f"e{i}"))
        times[f"e{i}"] = now
    started, batch = feed(config, events)
    batches = [*started, *([batch.events] if batch is not None else [])]
    assert [e for b in batches for e in b] == [e for _, e in events]
    for b in batches:
        assert 1 <= len(b) <= max_size
        assert times[b[-1]] - times[b[0]] < config.timeout  # nobody joins a due batch
