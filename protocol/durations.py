"""Durations as users write them: ``timedelta``, seconds, or ``"500ms"``, ``"30s"``, ``"1h30m"``.

Both sides parse durations the same way, so the worker can validate options at import time and
the gateway can trust the seconds it receives in the manifest.

Plain numbers are seconds (Python's convention), where Inngest's SDKs take milliseconds. The
mistake is silent and costly (``RetryAfterError(msg, 5000)`` waits 83 minutes), so one rule,
:func:`milliseconds_suspected`, makes it loud wherever a duration is read.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

import structlog

from protocol.errors import InvalidInput

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")

#: One year (366 days, so that the same date next year always fits): the longest sleep, and
#: the default timeout of ``step.invoke``, as in Inngest.
YEAR = 366 * 86400.0

#: The longest ``step.sleep`` / ``sleep_until`` (Inngest's limit too).
MAX_SLEEP = YEAR

#: A bare integer at least this large, and a whole multiple of it, reads as milliseconds:
#: Inngest users write 5000, 60000, 3600000; the round numbers of seconds people write (60,
#: 300, 3600, 86400) are not multiples of 1000, so they stay quiet.
MS_SUSPECT = 1000

Duration = timedelta | float | int | str

log = structlog.get_logger("tether.durations")


def to_seconds(value: Duration, *, what: str = "duration") -> float:
    """Return ``value`` in seconds; warn when a bare number was probably meant as milliseconds.

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
    warn_if_milliseconds(value, what=what)
    return seconds


def check_sleep(seconds: float, *, what: str, target: str = "") -> float:
    """Return ``seconds`` if a durable sleep may last that long.

    Raises:
        InvalidInput: over :data:`MAX_SLEEP`, saying by how much (``target``: until when).
    """
    if seconds > MAX_SLEEP:
        until = f"{target} is {human(seconds)} from now, which" if target else human(seconds)
        raise InvalidInput(
            f"{what}: {until} is longer than the longest sleep, one year "
            f"({human(MAX_SLEEP)}); sleep in several steps, or schedule the work with an "
            "event whose ts lies in the future"
        )
    return seconds


def milliseconds_suspected(value: object, *, what: str = "duration") -> str | None:
    """The warning for a bare integer that was probably meant as milliseconds, else None.

    The rule: an ``int`` (not a float, string or timedelta) of at least :data:`MS_SUSPECT`
    that is a whole multiple of it. Floats are what Tether produces once a duration is
    normalised and what computed delays are; an integer literal is what a migrating user types.
    """
    if (isinstance(value, bool) or not isinstance(value, int) or value < MS_SUSPECT
            or value % MS_SUSPECT):
        return None
    ms_reading = human(value / 1000)
    return (
        f"{what}: {value} seconds ({human(value)}); if you meant {value} ms, pass "
        f'"{ms_reading}" or {value // 1000} (numbers are seconds in Tether; pass "{value}s" '
        "or a timedelta to say you meant seconds)"
    )


def warn_if_milliseconds(value: object, *, what: str = "duration") -> None:
    """Log :func:`milliseconds_suspected`'s warning, if any."""
    warning = milliseconds_suspected(value, what=what)
    if warning is not None:
        log.warning("duration_maybe_milliseconds", what=what, value=value, message=warning)


def human(seconds: float) -> str:
    """``5000`` -> ``"1h23m20s"``: a duration in the notation :func:`to_seconds` reads."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out = []
    rest = round(seconds, 3)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, rest = divmod(rest, size)
        if count:
            out.append(f"{int(count)}{unit}")
    if rest:
        out.append(f"{rest:g}s")
    return "".join(out) or "0s"
