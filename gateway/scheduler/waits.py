"""Indexing waits by the equality in their ``if_``, so an event meets only the waits it can match.

``step.wait_for_event(..., if_="async.data.order_id == event.data.order_id")`` waits for an
event whose ``data.order_id`` equals the trigger's. The wait is stored under
``match_path="data.order_id"`` and ``match_key=<the trigger's value>``; an incoming event is
looked up with its own value at that path. The full expression is still evaluated on the few
candidates found, so the index only has to be sound: any event that satisfies ``if_`` has the
same key. Expressions with no usable equality (``||``, functions, parentheses) get the empty
path and are evaluated against every event of the name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_PATH = r"(async|event)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)"
_LITERAL = r"(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|-?\d+(?:\.\d+)?|true|false|null)"
_SIDE = rf"(?:{_PATH}|{_LITERAL})"
_TERM = re.compile(rf"^\s*{_SIDE}\s*==\s*{_SIDE}\s*$")

#: The key of a path an event does not have: never equal to a real value's key.
MISSING = "\x00missing"


@dataclass(frozen=True, slots=True)
class WaitIndex:
    """Where to file a wait: the candidate's path, and the key it must have there."""

    path: str  # "" when the expression has no usable equality
    key: str


NO_INDEX = WaitIndex("", "")


def index_for(if_: str | None, trigger: dict[str, Any]) -> WaitIndex:
    """The index entry of a wait whose filter is ``if_`` and whose run started with ``trigger``."""
    if not if_ or "||" in if_ or "(" in if_:
        return NO_INDEX
    for term in if_.split("&&"):
        match = _TERM.match(term)
        if match is None:
            continue
        left = (match.group(1), match.group(2), match.group(3))
        right = (match.group(4), match.group(5), match.group(6))
        for candidate, other in ((left, right), (right, left)):
            if candidate[0] != "async":
                continue
            path = candidate[1].lstrip(".")
            if other[0] == "event":
                return WaitIndex(path, key_at(trigger, other[1].lstrip(".")))
            if other[0] is None and other[2] is not None:
                return WaitIndex(path, _literal_key(other[2]))
    return NO_INDEX


def key_at(event: dict[str, Any], path: str) -> str:
    """The canonical key of ``event``'s value at a dotted ``path`` (MISSING if absent)."""
    value: Any = event
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return canonical(value)


def canonical(value: Any) -> str:
    """JSON with sorted keys, and integral floats as ints (CEL compares 1 and 1.0 equal)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _literal_key(text: str) -> str:
    if text.startswith("'"):
        text = '"' + text[1:-1].replace('"', '\\"') + '"'
    try:
        return canonical(json.loads(text))
    except ValueError:
        return MISSING
