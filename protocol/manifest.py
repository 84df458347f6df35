"""What a worker declares about its apps: functions, triggers and options.

The option types here are the ones users write (``TriggerEvent("shop/order.paid")``,
``Throttle(limit=3, period="1m")``); :mod:`worker` re-exports them. They are validated pydantic
dataclasses, so a bad option fails at import time on the worker with a clear message, and the
same class travels in the ``Hello`` manifest to the gateway, which validates it again.
Durations are normalised to seconds on validation.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

from protocol.durations import to_seconds
from protocol.expressions import check
from protocol.names import check_no_nul

_CONFIG = ConfigDict(extra="forbid")

#: A duration as users write it; stored as float seconds once validated.
Seconds = Annotated[timedelta | float | str, BeforeValidator(lambda v: to_seconds(v))]

#: Function and app ids: what may appear in ``"{app_id}/{fn_id}"`` and in URLs.
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"


@dataclass(frozen=True, config=_CONFIG)
class TriggerEvent:
    """Start a run for each event named ``event`` (a trailing ``*`` matches a prefix).

    ``if_`` is a CEL expression over ``event`` that must be true for the run to start.
    """

    event: Annotated[str, Field(min_length=1, max_length=255)]
    if_: str | None = None

    @field_validator("event")
    @classmethod
    def _star_only_at_end(cls, value: str) -> str:
        check_no_nul(value, f"event {value!r}")
        if "*" in value[:-1]:
            raise ValueError(f"{value!r}: '*' may only end an event name, as in 'shop/*'")
        return value


@dataclass(frozen=True, config=_CONFIG)
class TriggerCron:
    """Start a run on a cron schedule (five fields), in time zone ``tz``."""

    cron: Annotated[str, Field(min_length=1, max_length=255)]
    tz: str = "UTC"


Trigger = TriggerEvent | TriggerCron


@dataclass(frozen=True, config=_CONFIG)
class Concurrency:
    """At most ``limit`` runs executing at once, per ``key`` (CEL) if given."""

    limit: Annotated[int, Field(ge=1)]
    key: str | None = None
    scope: Literal["fn", "app"] = "fn"


@dataclass(frozen=True, config=_CONFIG)
class Throttle:
    """At most ``limit`` run starts per ``period``; extra runs wait (GCRA), never dropped."""

    limit: Annotated[int, Field(ge=1)]
    period: Seconds
    burst: int = Field(default=1, ge=1)
    key: str | None = None


@dataclass(frozen=True, config=_CONFIG)
class RateLimit:
    """At most ``limit`` runs per ``period``; events over the limit start no run."""

    limit: Annotated[int, Field(ge=1)]
    period: Seconds
    key: str | None = None


@dataclass(frozen=True, config=_CONFIG)
class Debounce:
    """Run once with the last event after ``period`` of quiet, at the latest after ``timeout``."""

    period: Seconds
    key: str | None = None
    timeout: Seconds | None = None


@dataclass(frozen=True, config=_CONFIG)
class Batch:
    """Collect up to ``max_size`` events, or what arrived within ``timeout``, into one run."""

    max_size: Annotated[int, Field(ge=1)]
    timeout: Seconds
    key: str | None = None


@dataclass(frozen=True, config=_CONFIG)
class Priority:
    """``run``: CEL giving seconds (-600..600) by which a run jumps ahead of (or behind) others."""

    run: str


@dataclass(frozen=True, config=_CONFIG)
class Singleton:
    """One active run per ``key``: ``skip`` the new one, or ``cancel`` the running one."""

    key: str | None = None
    mode: Literal["skip", "cancel"] = "skip"


@dataclass(frozen=True, config=_CONFIG)
class Cancel:
    """Cancel the run when ``event`` arrives and ``if_`` (CEL over event and async) holds."""

    event: Annotated[str, Field(min_length=1, max_length=255)]
    if_: str | None = None
    timeout: Seconds | None = None

    @field_validator("event")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        return check_no_nul(value, f"event {value!r}")


@dataclass(frozen=True, config=_CONFIG)
class Timeouts:
    """Cancel a run not started within ``start``, or not finished within ``finish``."""

    start: Seconds | None = None
    finish: Seconds | None = None


@dataclass(frozen=True, config=_CONFIG)
class FunctionConfig:
    """One function as the gateway sees it. ``id`` is the short id; the full id is app/id."""

    id: Annotated[str, Field(pattern=_ID_PATTERN)]
    name: str = ""
    triggers: list[TriggerEvent | TriggerCron] = Field(default_factory=list, max_length=10)
    retries: int = Field(default=4, ge=0, le=20)
    concurrency: list[Concurrency] = Field(default_factory=list, max_length=2)
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    batch: Batch | None = None
    priority: Priority | None = None
    idempotency: str | None = None
    singleton: Singleton | None = None
    cancel_on: list[Cancel] = Field(default_factory=list, max_length=5)
    timeouts: Timeouts | None = None
    #: Set on the generated ``{id}-failure`` function that runs a user's ``on_failure`` handler.
    on_failure_of: str | None = None
    #: ``"async"`` or ``"sync"``: shown in the dashboard and API; the gateway does not care.
    kind: Literal["async", "sync"] = "async"


@dataclass(frozen=True, config=_CONFIG)
class AppManifest:
    """An app a worker serves: its id, a version label, and its functions."""

    id: Annotated[str, Field(pattern=_ID_PATTERN)]
    version: str = ""
    functions: list[FunctionConfig] = Field(default_factory=list)


def check_expressions(function_id: str, config: FunctionConfig) -> None:
    """Compile every CEL expression of a function, checking the variables each may read.

    Called by the worker when the function is declared and by the gateway when the app
    registers, so a typo is reported before any event depends on it.

    Raises:
        ExpressionError: naming the function and the option that holds the expression.
    """
    event_only = frozenset({"event"})
    pair = frozenset({"event", "async"})
    found: list[tuple[str, str | None, frozenset[str]]] = [
        *((f"trigger {t.event!r} if_", t.if_, event_only)
          for t in config.triggers if isinstance(t, TriggerEvent)),
        *((f"concurrency[{i}].key", c.key, event_only) for i, c in enumerate(config.concurrency)),
        *((f"cancel_on[{i}].if_", c.if_, pair) for i, c in enumerate(config.cancel_on)),
        ("idempotency", config.idempotency, event_only),
    ]
    for name, option in (("throttle", config.throttle), ("rate_limit", config.rate_limit),
                         ("debounce", config.debounce), ("batch", config.batch),
                         ("singleton", config.singleton)):
        found.append((f"{name}.key", getattr(option, "key", None), event_only))
    if config.priority is not None:
        found.append(("priority.run", config.priority.run, event_only))
    for where, source, allowed in found:
        if source is not None:
            check(source, allowed, where=f"function {function_id!r}: {where}")


__all__ = [
    "AppManifest",
    "Batch",
    "Cancel",
    "Concurrency",
    "Debounce",
    "FunctionConfig",
    "Priority",
    "RateLimit",
    "Seconds",
    "Singleton",
    "Throttle",
    "Timeouts",
    "Trigger",
    "TriggerCron",
    "TriggerEvent",
    "check_expressions",
]
