"""Singleton: at most one live run per key; ``skip`` the new one or ``cancel`` the running one.

Inngest's semantics: "one active run per key"; an active run is any that has not ended, so a
sleeping or waiting run holds its key too (unlike a concurrency slot). ``skip`` records the new
run as Skipped; ``cancel`` cancels the live run and starts the new one. Two events of a key
admitted in the same transaction are decided one after the other (the first one's run is the
"live run" of the second).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal


class Action(enum.Enum):
    START = "start"  # no live run of the key: start the new one
    SKIP = "skip"  # record the new run as Skipped, the live one goes on
    CANCEL_AND_START = "cancel_and_start"  # cancel ``live_run``, then start the new one


@dataclass(frozen=True)
class SingletonDecision:
    action: Action
    live_run: str | None = None

    @property
    def reason(self) -> str | None:
        """The skip reason to record, when the new run is skipped."""
        if self.action is Action.SKIP:
            return f"singleton: run {self.live_run} of the same key is still live"
        return None


def decide(mode: Literal["skip", "cancel"], live_run: str | None) -> SingletonDecision:
    """What to do with a new run of a key whose live run (if any) is ``live_run``."""
    if live_run is None:
        return SingletonDecision(Action.START)
    if mode == "skip":
        return SingletonDecision(Action.SKIP, live_run)
    if mode == "cancel":
        return SingletonDecision(Action.CANCEL_AND_START, live_run)
    raise ValueError(f"singleton mode {mode!r}: use 'skip' or 'cancel'")
