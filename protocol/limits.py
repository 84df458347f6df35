"""Defaults that both sides must agree on, each defined once (SPEC §5 and the socket's).

The gateway may change the limits (``--max-*``) and tells each worker in ``Ready``; these are
the values when nobody changed them. Everything else imports them from here.
"""

from __future__ import annotations

#: Steps one run may record.
MAX_STEPS = 1000
#: Bytes of one step result (or of a run's output).
MAX_STEP_RESULT = 4 * 1024 * 1024
#: Bytes of all the step results one run may record.
MAX_RUN_STATE = 32 * 1024 * 1024
#: Bytes of one event, and of one ``POST /e`` request.
MAX_EVENT_SIZE = 512 * 1024
MAX_REQUEST_SIZE = 3 * 1024 * 1024

#: Largest sequence number, fence or attempt on the wire: fits any database integer column
#: (and a float, exactly).
MAX_COUNT = 2**53
#: Warnings one ``RunCompleted`` or ``RunFailed`` may carry, and characters in each.
MAX_RUN_WARNINGS = 10
MAX_RUN_WARNING = 2000

#: Heartbeat intervals a worker may miss before it loses its leases.
MISSED_HEARTBEATS = 3

#: The longest a ``RetryAfterError`` may push an attempt back, in seconds (the wire takes no
#: infinity).
MAX_RETRY_AFTER = 24 * 3600.0

#: Tether's version, as both sides report it (``/health``, ``Hello.sdk_version``).
VERSION = "0.1.0"
