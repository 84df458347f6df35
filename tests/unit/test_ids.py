"""protocol.ids: a ULID is its millisecond (48 bits) then 80 random bits, in Crockford base32."""

from __future__ import annotations

import random

import pytest

from protocol import ids


def _value(ulid: str) -> int:
    value = 0
    for char in ulid:
        value = (value << 5) | ids._VALUES[char]
    return value


def test_an_id_is_its_millisecond_then_its_random_bits(monkeypatch):
    for seed in range(200):
        now = random.Random(seed).uniform(0, 2**47 / 1000)
        monkeypatch.setattr(ids, "_random", random.Random(seed))
        bits = random.Random(seed).getrandbits(80)
        ulid = ids.new_id(now)
        assert len(ulid) == 26 and set(ulid) <= set(ids._ALPHABET)
        assert _value(ulid) == (int(now * 1000) << 80) | bits
        assert ids.id_time(ulid) == int(now * 1000) / 1000


def test_ids_sort_by_creation_time():
    times = [1_700_000_000.0 + i / 7 for i in range(100)]
    made = [ids.new_id(t) for t in times]
    assert sorted(made) == made


def test_ids_made_in_one_millisecond_share_its_characters_and_differ_after(monkeypatch):
    monkeypatch.setattr(ids, "_random", random.Random(7))
    first, second = ids.new_id(1_700_000_000.0004), ids.new_id(1_700_000_000.0009)
    later = ids.new_id(1_700_000_000.001)
    assert first[:10] == second[:10] != later[:10] and first != second
    assert [ids.id_time(i) for i in (first, second, later)] == [1_700_000_000.0] * 2 + [
        1_700_000_000.001]


def test_a_time_is_read_only_from_crockford_characters():
    for bad in ("ILOU000000", "abc0000000", "0000 00000", "000_000000", "+000000000",
                "\u0663" * 10):
        with pytest.raises(KeyError):
            ids.id_time(bad)
    assert ids.id_time("") == 0.0 and ids.id_time("0000000001ZZZ") == 0.001


def test_times_read_again_are_the_same_past_the_cache_bound():
    rng = random.Random(3)
    made = [ids.new_id(rng.uniform(0, 2**47 / 1000)) for _ in range(3 * ids._TIMES_KEPT)]
    first = [ids.id_time(i) for i in made]
    assert first == [ids.id_time(i) for i in made]  # read again: from the cache, or not
    assert first == [_value(i[:10]) / 1000 for i in made]
    assert len(ids._TIMES) <= ids._TIMES_KEPT
    with pytest.raises(KeyError):  # a bad head is refused each time, never remembered
        ids.id_time("ILOU000000")
    with pytest.raises(KeyError):
        ids.id_time("ILOU000000")
