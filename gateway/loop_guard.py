"""Which functions a ``tether/function.*`` system event may start: the loop guard.

A function that triggers on ``tether/function.finished`` without a filter would otherwise be
started by its own finish, forever. Two rules, both pure:

1. A system event about a run of function F never starts F.
2. Chains are capped: a system event about a run that was itself started by a system event is
   one link further down the chain; past :data:`MAX_CHAIN` links it starts nothing (it is
   still stored, and waits still see it). So F -> G -> F loops end too.
"""

from __future__ import annotations

from typing import Any

from protocol.names import RUN_ENDINGS

#: The longest chain of runs started by each other's system events.
MAX_CHAIN = 8


def chain_length(trigger: Any) -> int:
    """How many system events lead to ``trigger`` (a run's triggering event, decoded).

    A run-ending event embeds the triggering event of the run it reports, so the chain is
    read by following ``data.event`` while the event is itself a run ending.
    """
    length = 0
    event = trigger
    while (isinstance(event, dict) and event.get("name") in RUN_ENDINGS
           and length <= MAX_CHAIN):
        length += 1
        data = event.get("data")
        event = data.get("event") if isinstance(data, dict) else None
    return length


def targets(matched: list[str], *, about: str, link: int) -> list[str]:
    """The functions of ``matched`` that a system event about a run of ``about`` may start.

    ``link`` is the event's place in its chain (1 for a run started by an ordinary event).
    """
    if link > MAX_CHAIN:
        return []
    return [f for f in matched if f != about]
