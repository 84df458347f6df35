"""Time-ordered unique ids (ULIDs) for events, runs, sessions and leases.

Sorted by creation time, so listings and indexes keep insertion order, and readable in logs.
"""

from __future__ import annotations

import random

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUES = {char: index for index, char in enumerate(_ALPHABET)}
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # index: 10 bits
#: Crockford's characters as ``int(..., 32)``'s digits; any other ASCII one as a non-digit.
_DIGITS = {code: "!" for code in range(128)} | {
    ord(char): "0123456789ABCDEFGHIJKLMNOPQRSTUV"[index] for index, char in enumerate(_ALPHABET)}
_random = random.Random()  # ids need uniqueness, not secrecy: no syscall per id
_last = (-1, "")  # the last millisecond an id was made in, and its ten characters


def new_id(now: float) -> str:
    """Return a 26-character ULID: 48 bits of ``now``'s milliseconds, then 80 random bits.

    ``now`` (epoch seconds) comes from the caller's clock: this module reads none.
    """
    ms = int(now * 1000)
    # 130 bits (2 leading zeros), ten bits (two characters) at a time, most significant
    # first: the millisecond's ten characters (made once per millisecond: a gateway under
    # load makes hundreds of ids in each), then the random bits' sixteen.
    last = _last
    if last[0] != ms:
        last = _remember(ms)
    bits = _random.getrandbits(80)
    pairs = _PAIRS
    return "".join((last[1], pairs[bits >> 70 & 1023], pairs[bits >> 60 & 1023],
                    pairs[bits >> 50 & 1023], pairs[bits >> 40 & 1023], pairs[bits >> 30 & 1023],
                    pairs[bits >> 20 & 1023], pairs[bits >> 10 & 1023], pairs[bits & 1023]))


def _remember(ms: int) -> tuple[int, str]:
    """The ten characters of millisecond ``ms``, kept for the next id (one tuple, replaced
    whole: ids made on two threads read either the old one or the new one)."""
    global _last
    _last = (ms, "".join([_PAIRS[(ms >> shift) & 1023] for shift in (40, 30, 20, 10, 0)]))
    return _last


def id_time(value: str) -> float:
    """The creation time (epoch seconds, to the millisecond) of an id from :func:`new_id`.

    Raises:
        KeyError: ``value`` starts with a character that is not Crockford base32's.
    """
    head = value[:10]
    known = _TIMES.get(head)
    if known is not None:
        return known
    when = _time(head)
    if len(_TIMES) >= _TIMES_KEPT:
        _TIMES.clear()
    _TIMES[head] = when
    return when


#: Times of the milliseconds read lately: under load a batch ends hundreds of runs created
#: in a few milliseconds, whose ids share their first ten characters.
_TIMES: dict[str, float] = {}
_TIMES_KEPT = 4096


def _time(head: str) -> float:
    if head.isascii():
        try:
            return int(head.translate(_DIGITS), 32) / 1000
        except ValueError:
            pass
    ms = 0
    for char in head:
        ms = (ms << 5) | _VALUES[char]
    return ms / 1000
