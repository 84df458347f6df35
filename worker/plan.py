"""What a step call becomes: run it new, replay its record, or park the branch.

Shared by the runner (which decides) and the step API and context (which act on the
decision), so that neither of them imports the other: the worker's imports form a DAG
(runner -> context -> steps -> plan).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import NamedTuple

from protocol import messages as m


class NewStep(NamedTuple):
    """A step to execute now, at ``attempt`` (a tuple: one is made for every step)."""

    id: str
    attempt: int


#: The step whose code is running in this context (None in the function body): its id and
#: attempt. One variable, set to the step's own plan: two cost twice as much per step.
current_step: contextvars.ContextVar[NewStep | None] = contextvars.ContextVar(
    "tether_step", default=None
)


@dataclass(frozen=True, slots=True)
class Replay:
    """A step already recorded: return its result (or raise its error)."""

    id: str
    memo: m.StepMemo


class Park:
    """The step cannot run now; the branch must park."""


PARK = Park()
