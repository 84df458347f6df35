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

#: Attempt of the step whose code is running in this context (None in the function body).
current_attempt: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "tether_step_attempt", default=None
)
#: Id of the step whose code is running in this context (None in the function body).
current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tether_step_id", default=None
)


class NewStep(NamedTuple):
    """A step to execute now, at ``attempt`` (a tuple: one is made for every step)."""

    id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Replay:
    """A step already recorded: return its result (or raise its error)."""

    id: str
    memo: m.StepMemo


class Park:
    """The step cannot run now; the branch must park."""


PARK = Park()
