"""Every error Tether raises, in one tree.

Each class carries a stable ``code`` (sent in the wire ``Error`` message and in logs) and an
``http_status`` hint, so the HTTP layer and the socket layer map errors the same way::

    TetherError
    ├── ProtocolError                 the worker socket was misused
    │   ├── RemoteProtocolError       the peer sent garbage: close its socket, keep serving
    │   └── LocalProtocolError        we were about to send something invalid: a bug of ours
    ├── AuthError                     missing, unknown or forged credentials (401)
    ├── InvalidInput                  a request we understand but refuse (400)
    │   ├── PayloadTooLarge           over a size limit (413)
    │   └── ExpressionError           a CEL expression that does not compile or evaluate
    ├── NotFound                      unknown route, run, event or function (404)
    ├── LeaseLost                     a checkpoint from a lease that is no longer current
    ├── NonDeterminismError           a replay asked for steps in another shape than its history
    ├── LimitExceeded                 too many steps, or a result or state too large
    ├── NonRetriableError             user code: fail the step or run at once
    ├── RetryAfterError               user code: retry, but not before ``retry_after``
    └── StepError                     raised in the function when a step failed for good

The three user-facing errors are re-exported by :mod:`worker`.
"""

from __future__ import annotations

from datetime import datetime, timedelta


class TetherError(Exception):
    """Root of every Tether error; ``code`` is stable, the message says what to do."""

    code: str = "internal_error"
    http_status: int = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class ProtocolError(TetherError):
    """The worker socket protocol was not followed."""

    code = "protocol_error"
    http_status = 400


class RemoteProtocolError(ProtocolError):
    """The peer sent a frame we cannot accept; its socket is closed with this reason."""

    code = "bad_frame"


class LocalProtocolError(ProtocolError):
    """We were about to send a message our own state machine forbids: a bug in Tether."""

    code = "local_protocol_error"
    http_status = 500


class AuthError(TetherError):
    """Credentials are missing, unknown or forged."""

    code = "unauthorized"
    http_status = 401


class InvalidInput(TetherError, ValueError):
    """The input is well-formed enough to read but breaks a rule; nothing was stored.

    It is also a ``ValueError`` so that pydantic validators report it like their own errors.
    """

    code = "invalid_input"
    http_status = 400


class PayloadTooLarge(InvalidInput):
    """An event, request, frame or step result is over its size limit."""

    code = "payload_too_large"
    http_status = 413


class ExpressionError(InvalidInput):
    """A CEL expression does not compile, or failed to evaluate."""

    code = "bad_expression"


class NotFound(TetherError):
    """The thing asked for does not exist."""

    code = "not_found"
    http_status = 404


class LeaseLost(TetherError):
    """The lease's fence is no longer current: another worker owns the run now."""

    code = "lease_lost"
    http_status = 409


class NonDeterminismError(TetherError):
    """A replayed run asked for a step that does not fit its recorded history."""

    code = "non_determinism"


class LimitExceeded(TetherError):
    """A run went over one of the limits of SPEC §5 (steps, result size, state size)."""

    code = "limit_exceeded"
    http_status = 413


class NonRetriableError(TetherError):
    """Raise from a step or function to fail it at once, without further attempts."""

    code = "non_retriable"


class RetryAfterError(TetherError):
    """Raise to retry the step or function, but not before ``retry_after``.

    Args:
        message: what went wrong.
        retry_after: a delay (seconds, ``timedelta`` or a string such as ``"30s"``) or an
            absolute ``datetime`` (naive means UTC). Seconds, not Inngest's milliseconds: a
            bare integer that looks like milliseconds logs a warning.
    """

    code = "retry_after"

    def __init__(self, message: str, retry_after: float | timedelta | datetime | str) -> None:
        super().__init__(message)
        from protocol.durations import to_seconds, warn_if_milliseconds  # imports this module

        if isinstance(retry_after, str):
            retry_after = to_seconds(retry_after, what="RetryAfterError retry_after")
        else:
            warn_if_milliseconds(retry_after, what="RetryAfterError retry_after")
        self.retry_after: float | timedelta | datetime = retry_after


class StepError(TetherError):
    """A step failed for good (retries exhausted or non-retriable); raised in the function.

    ``name`` and ``message`` are the original error's class name and message (as in Inngest),
    ``step_id`` the step, ``stack`` its traceback as text; ``str()`` frames them all in one
    line. The original error may have happened on another worker in an earlier attempt, so only
    its description survives: a ``NonRetriableError`` raised inside ``step.run`` reaches the
    function as a ``StepError`` whose ``name`` is ``"NonRetriableError"`` (and fails the run
    at once if the function lets it through).
    """

    code = "step_failed"

    def __init__(self, step_id: str, name: str, message: str, stack: str | None = None) -> None:
        super().__init__(f"step {step_id!r} failed: {name}: {message}")
        self.step_id = step_id
        self.name = name
        self.message = message
        self.stack = stack

    @property
    def error_message(self) -> str:
        """The original message: the older name of :attr:`message`."""
        return self.message


#: Wire code -> class, so a received ``Error`` message can be raised as the right type.
BY_CODE: dict[str, type[TetherError]] = {
    cls.code: cls
    for cls in (
        TetherError,
        ProtocolError,
        RemoteProtocolError,
        LocalProtocolError,
        AuthError,
        InvalidInput,
        PayloadTooLarge,
        ExpressionError,
        NotFound,
        LeaseLost,
        NonDeterminismError,
        LimitExceeded,
    )
}
