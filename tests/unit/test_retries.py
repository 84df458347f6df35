"""gateway.runs: retry backoff with jitter, and when the next attempt may start."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from pydantic import ValidationError

from gateway.runs import MAX_BACKOFF, MAX_RETRY_AFTER, backoff, retry_at
from protocol import messages as m

ERROR = m.ErrorInfo(name="E", message="boom")
NOW = 1_700_000_000.0


class FixedRandom(random.Random):
    """``random()`` always returns ``value``: pins the jitter to one end of its range."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def step_failed(attempt: int = 0, final: bool = False,
                retry_after: float | None = None) -> m.StepFailed:
    return m.StepFailed(seq=1, run_id="r", fence=1, step_id="s", attempt=attempt, error=ERROR,
                        final=final, retry_after=retry_after, started_at=0.0, ended_at=0.0)


def run_failed(attempt: int = 0, final: bool = False,
               retry_after: float | None = None) -> m.RunFailed:
    return m.RunFailed(seq=1, run_id="r", fence=1, attempt=attempt, error=ERROR, final=final,
                       retry_after=retry_after)


def test_without_jitter_backoff_doubles_each_attempt():
    top = FixedRandom(1.0)  # the top of the jitter range: the full delay
    assert [backoff(a, 1.0, top) for a in range(6)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert backoff(3, 0.05, top) == pytest.approx(0.4)


def test_lowest_jitter_is_half_the_delay():
    assert backoff(4, 2.0, FixedRandom(0.0)) == 16.0


def test_backoff_is_capped():
    top = FixedRandom(1.0)
    assert backoff(11, 1.0, top) == 2048.0
    assert backoff(12, 1.0, top) == MAX_BACKOFF
    assert backoff(1000, 1.0, top) == MAX_BACKOFF  # no overflow for absurd attempts
    assert backoff(1000, 1.0, FixedRandom(0.0)) == MAX_BACKOFF / 2


@pytest.mark.parametrize("attempt", [0, 1, 3, 7, 15, 40])
def test_jitter_stays_within_half_and_full(attempt, rng):
    full = min(MAX_BACKOFF, 2.0 * 2**attempt)
    delays = [backoff(attempt, 2.0, rng) for _ in range(500)]
    assert all(full * 0.5 <= d <= full for d in delays)
    # Jitter really spreads the delays (not stuck at one end).
    assert min(delays) < full * 0.6 and max(delays) > full * 0.9


def test_seeded_rng_makes_backoff_reproducible():
    a = [backoff(i, 1.0, random.Random(7)) for i in range(5)]
    b = [backoff(i, 1.0, random.Random(7)) for i in range(5)]
    assert a == b


def test_mean_backoff_grows_exponentially(rng):
    means = [sum(backoff(a, 1.0, rng) for _ in range(200)) / 200 for a in range(5)]
    for earlier, later in itertools.pairwise(means):
        assert 1.6 < later / earlier < 2.4


@pytest.mark.parametrize("failure", [step_failed(final=True), run_failed(final=True),
                                     step_failed(final=True, retry_after=5.0)])
def test_final_failure_has_no_next_attempt(failure, rng):
    assert retry_at(failure, now=NOW, base=1.0, rng=rng) is None


@pytest.mark.parametrize("make", [step_failed, run_failed])
def test_next_attempt_uses_backoff_of_the_failed_attempt(make):
    when = retry_at(make(attempt=3), now=NOW, base=1.0, rng=FixedRandom(1.0))
    assert when == NOW + 8.0


@pytest.mark.parametrize("make", [step_failed, run_failed])
def test_retry_after_replaces_backoff(make, rng):
    assert retry_at(make(attempt=9, retry_after=2.5), now=NOW, base=1.0, rng=rng) == NOW + 2.5


def test_retry_after_zero_means_now(rng):
    assert retry_at(step_failed(retry_after=0.0), now=NOW, base=1.0, rng=rng) == NOW


def test_negative_retry_after_is_clamped_to_now(rng):
    assert retry_at(step_failed(retry_after=-30.0), now=NOW, base=1.0, rng=rng) == NOW


def test_huge_retry_after_is_clamped(rng):
    when = retry_at(run_failed(retry_after=365 * 86400.0), now=NOW, base=1.0, rng=rng)
    assert when == NOW + MAX_RETRY_AFTER


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_retry_after_that_is_not_a_finite_number_never_reaches_the_gateway(bad):
    # retry_after crosses the wire as a float: the protocol refuses NaN and infinities, so
    # they can never become a stored retry time (the SDK caps a user's infinite delay).
    with pytest.raises(ValidationError):
        step_failed(retry_after=bad)


def test_a_huge_retry_after_is_clamped(rng):
    when = retry_at(step_failed(retry_after=10 * MAX_RETRY_AFTER), now=NOW, base=1.0, rng=rng)
    assert when == NOW + MAX_RETRY_AFTER
