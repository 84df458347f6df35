"""gateway.metrics.Histogram writes what prometheus_client's Histogram writes, for less work."""

from __future__ import annotations

import random

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway import metrics


def _pair(labels: tuple[str, ...], buckets: tuple[float, ...]):
    ours, theirs = CollectorRegistry(auto_describe=False), CollectorRegistry(auto_describe=False)
    mine = metrics.Histogram("tether_t_seconds", "Doc.", labels, buckets=buckets, registry=ours)
    lib = prometheus_client.Histogram("tether_t_seconds", "Doc.", labels, buckets=buckets,
                                      registry=theirs)
    return ours, theirs, mine, lib


def test_the_exposition_text_is_the_librarys_byte_for_byte():
    ours, theirs, mine, lib = _pair(("function", "status"), metrics.RUN_BUCKETS)
    rng = random.Random(7)
    for i in range(3000):
        # Bucket bounds themselves (le is inclusive), zero, and values past the last bound.
        value = (rng.choice([0.0, 0.005, 0.01, 1.0, 86400.0, 1e9]) if i % 3 == 0
                 else rng.expovariate(0.5))
        key = (rng.choice(["shop/a", "shop/b"]), rng.choice(["Completed", "Failed"]))
        mine.labels(*key).observe(value)
        lib.labels(*key).observe(value)
    assert generate_latest(ours) == generate_latest(theirs)
    for names in (["tether_t_seconds_count"], ["tether_t_seconds_bucket", "tether_t_seconds_sum"]):
        assert (generate_latest(ours.restricted_registry(names))
                == generate_latest(theirs.restricted_registry(names)))


def test_a_family_without_labels_is_observed_directly():
    ours, theirs, mine, lib = _pair((), metrics.BATCH_BUCKETS)
    for size in (0, 1, 7, 500, 10_000):
        mine.observe(size)
        lib.observe(size)
    assert generate_latest(ours) == generate_latest(theirs)


def test_a_family_with_labels_needs_them_all():
    _, _, mine, _ = _pair(("function",), metrics.RUN_BUCKETS)
    with pytest.raises(ValueError, match=r"expected labels \('function',\)"):
        mine.labels("a", "b")
