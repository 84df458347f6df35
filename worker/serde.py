"""User values <-> JSON bytes: step results, function outputs, event data.

JSON, because the gateway returns these values from its HTTP API as they are, and a value
that survives JSON is a value that replays the same on any worker. A step returns what
decoding its recorded result gives, on the first run as on every replay, so what JSON changes
is seen at once, not only after a crash: tuples become lists, non-string dict keys strings,
datetimes, dates, UUIDs and dataclasses their JSON forms (ISO 8601 strings, objects), and
NaN or infinity null (orjson's conventions).
"""

from __future__ import annotations

from typing import Any

import orjson

from protocol.errors import LimitExceeded, NonRetriableError

#: orjson options of every user value Tether encodes (step results, outputs, sent events).
OPTIONS = orjson.OPT_NON_STR_KEYS

#: What to do instead: what JSON cannot hold, as orjson sees it (datetimes, dates, UUIDs,
#: dataclasses and enums it converts by itself).
HINT = ("return JSON values (dict, list, str, int, float, bool, None; datetimes, UUIDs and "
        "dataclasses are converted): e.g. a set becomes a list, bytes base64 text, a Decimal "
        "a str, your own class a dict or a dataclass")


class NotSerializable(NonRetriableError):
    """A step or function returned a value JSON cannot hold; retrying would not help."""

    code = "not_serializable"


def dumps(value: Any, *, what: str, limit: int) -> bytes:
    """Encode ``value``; ``what`` names it in errors ("step 'charge' result").

    Raises:
        NotSerializable: the value (or something inside it) is not JSON.
        LimitExceeded: the encoded value is over ``limit`` bytes.
    """
    try:
        data = orjson.dumps(value, option=OPTIONS)
    except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
        raise NotSerializable(f"{what} cannot be stored: {exc}; {HINT}") from exc
    if len(data) > limit:
        raise LimitExceeded(
            f"{what} is {len(data) / 1024 / 1024:.1f} MiB, over the "
            f"{limit / 1024 / 1024:.0f} MiB limit; store large data elsewhere and return a "
            "reference to it"
        )
    return data


def loads(data: bytes) -> Any:
    return orjson.loads(data)
