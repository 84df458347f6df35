"""Private interrupts that unwind user code at a step boundary.

They extend ``BaseException`` so that a user's ``except Exception`` does not swallow them
(the same choice as inngest-py's ``ResponseInterrupt`` and trio's ``Cancelled``).
"""

from __future__ import annotations


class Abandoned(BaseException):
    """This execution of the run is over here (suspended, handed back, or its lease lost).

    Raised at the step boundary where the user's code was parked; the run continues later
    from its checkpoints, on this worker or another.
    """
