"""Durations as users write them: ``timedelta``, seconds, or ``"500ms"``, ``"30s"``, ``"1h30m"``.

Both sides parse durations the same way, so the worker can validate options at import time and
the gateway can trust the seconds it receives in the manifest.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from protocol.errors import InvalidInput

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")

Duration = timedelta | float | int | str


def to_seconds(value: Duration, *, what: str = "duration") -> float:
    """Return ``value`` in seconds.

    Raises:
        InvalidInput: for a negative or non-finite value, or a string that is not a sequence of
            ``<number><unit>`` parts with units ms, s, m, h, d, w.
    """
    if isinstance(value, bool):
        raise InvalidInput(f"{what}: expected a duration, got a bool")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise InvalidInput(
                f"{what}: {value!r} is not a duration; write e.g. '500ms', '30s', '5m', '2h', "
                "'7d' or '1h30m', or pass seconds as a number"
            )
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise InvalidInput(f"{what}: expected a duration, got {type(value).__name__}")
    if seconds < 0:
        raise InvalidInput(f"{what}: {value!r} is negative")
    if not math.isfinite(seconds):
        raise InvalidInput(f"{what}: {value!r} is not a finite number of seconds")
    return seconds
