"""The errors user code raises or catches, re-exported from :mod:`protocol.errors`."""

from __future__ import annotations

from protocol.errors import (
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    TetherError,
)

__all__ = [
    "NonDeterminismError",
    "NonRetriableError",
    "RetryAfterError",
    "StepError",
    "TetherError",
]
