"""protocol.ids: a ULID is its millisecond (48 bits) then 80 random bits, in Crockford base32."""

from __future__ import annotations

import random

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
