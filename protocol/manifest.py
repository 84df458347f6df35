"""What a worker declares about its apps: functions, triggers and options.

The option types here are the ones users write (``TriggerEvent("shop/order.paid")``,
``Throttle(limit=3, period="1m")``); :mod:`worker` re-exports them. They are validated pydantic
dataclasses, so a bad option fails at import time on the worker with a clear message, and the
same class travels in the ``Hello`` manifest to the gateway, which validates it again.
Durations are normalised to seconds on validation.

Registration (:func:`check_function`, on the worker when a function is declared and on the
gateway when an app registers) adds the rules that only apply to new declarations: event-name
wildcards as Inngest writes them, CEL expressions that compile, and no option the gateway does
not enforce yet (:data:`UNENFORCED`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.dataclasses import dataclass

from protocol import cron as _cron
from protocol.durations import to_seconds
from protocol.errors import InvalidInput
from protocol.expressions import check
from protocol.names import RESERVED_PREFIX, check_no_nul

_CONFIG = ConfigDict(extra="forbid")


#: Options the gateway does not enforce yet, with the issue that brings each. A function that
#: sets one is refused when it is declared (SDK) and when its app registers (gateway), so no
#: option is ever silently ignored. Remove an entry in the change that enforces it
#: (tests/unit/test_options.py lists every option the SDK accepts and fails until you do).
UNENFORCED: dict[str, str] = {
}

#: The most events one run of a batch or a collecting debounce holds (a lease carries them all).
MAX_RUN_EVENTS = 100
#: The longest debounce period or timeout, and batch timeout (Inngest's debounce bound).
MAX_WINDOW = 7 * 86400.0


def _seconds(value: Any, info: ValidationInfo) -> float:
    owner = info.config.get("title", "") if info.config else ""
    return to_seconds(value, what=f"{owner}.{info.field_name}" if owner else str(info.field_name))


#: A duration as users write it; stored as float seconds once validated.
Seconds = Annotated[timedelta | float | str, BeforeValidator(_seconds)]

_T = TypeVar("_T")


def describe(exc: ValidationError, owner: str = "", fields: tuple[str, ...] = ()) -> str:
    """pydantic's errors as one line: ``Timeouts.start: 'soon' is not a duration; ...``.

    ``fields`` names the constructor's positional arguments, which pydantic reports by index.
    """
    parts = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if loc and isinstance(loc[0], int) and loc[0] < len(fields):
            loc[0] = fields[loc[0]]
        where = ".".join(str(p) for p in loc)
        where = f"{owner}.{where}" if owner and where else owner or where
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(message if not where or message.startswith(f"{where}:")
                     else f"{where}: {message}")
    return "; ".join(parts)


def _plain_errors(cls: type[_T]) -> type[_T]:
    """Make the constructor users call raise :class:`InvalidInput` with one clear line.

    pydantic's ``ValidationError`` names neither the option's class nor what to do. Only
    ``__init__`` changes: validating a received manifest does not go through it.
    """
    init: Callable[..., None] = cls.__init__
    fields = tuple(getattr(cls, "__dataclass_fields__", ()))

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise InvalidInput(describe(exc, cls.__name__, fields)) from None

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


#: Function and app ids: what may appear in ``"{app_id}/{fn_id}"`` and in URLs.
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"


@_plain_errors
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


@_plain_errors
@dataclass(frozen=True, config=_CONFIG)
class TriggerCron:
    """Start a run on a cron schedule, in time zone ``tz`` (or a ``TZ=Area/City `` prefix).

    Five fields, or six with a leading seconds field; see :mod:`protocol.cron`
    (which owns the parsing, so the SDK and the gateway refuse the same expressions).
    """

    cron: Annotated[str, Field(min_length=1, max_length=255)]
    tz: Annotated[str, Field(min_length=1, max_length=64)] = "UTC"


def _cron_checked(init: Callable[..., None]) -> Callable[..., None]:
    """``TriggerCron(...)`` as users call it refuses a bad schedule at once (a received
    manifest is checked by :func:`check_function` instead, with the function named)."""
    @functools.wraps(init)
    def __init__(self: TriggerCron, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        try:
            _cron.parse(self.cron, self.tz)
        except InvalidInput as exc:
            raise InvalidInput(f"TriggerCron: {exc}") from None

    return __init__


TriggerCron.__init__ = _cron_checked(TriggerCron.__init__)  # type: ignore[method-assign]


Trigger = TriggerEvent | TriggerCron


@_plain_errors
@dataclass(frozen=True, config=_CONFIG)
class Concurrency:
    """At most ``limit`` runs executing at once, per ``key`` (CEL) if given; at most
    ``max_queued`` runs of a key waiting (more are recorded ``Skipped``)."""

    limit: Annotated[int, Field(ge=1)]
    key: str | None = None
    scope: Literal["fn", "app"] = "fn"
    max_queued: Annotated[int, Field(ge=1)] | None = None


@_plain_errors
@dataclass(frozen=True, config=_CONFIG)
class Throttle:
    """At most ``limit`` run starts per ``period``; extra runs wait (GCRA), never dropped."""

    limit: Annotated[int, Field(ge=1)]
    period: Seconds
    burst: int = Field(default=1, ge=1)
    key: str | None = None


@_plain_errors
@dataclass(frozen=True, config=_CONFIG)
class RateLimit:
    """At most ``limit`` runs per ``period``; events over the limit start no run."""

    limit: Annotated[int, Field(ge=1)]
    period: Seconds
    key: str | None = None


@_plain_errors
@dataclass(frozen=True, config=_CONFIG)
class Debounce:
    """Run once with the last event after ``period`` of quiet, at the latest after ``timeout``.

    ``collect=True``: the run gets every event of the window (``ctx.events``, in arrival
    order, at most :data:`MAX_RUN_EVENTS`; the event that fills it starts the run at once).
    """

    period: Seconds
    key: str | None = None
    timeout: Seconds | None = None
    collect: bool = False

    @field_validator("period", "timeout")
    @classmethod
    def _window(cls, value: float | None, info: ValidationInfo) -> float | None:
        return _window_bound(value, f"Debounce.{info.field_name}")


@_plain_errors
@dataclass(frozen=True, config=_CONFIG)
class Batch:
    """Collect up to ``max_size`` events, or what arrived within ``timeout``, into one run.

    ``if_`` (CEL over ``event``): an event for which it is false gets a run of its own, at once.
    """

    max_size: Annotated[int, Field(ge=1, le=MAX_RUN_EVENTS)]
    timeout: Seconds
    key: str | None = None
    if_: str | None = None

    @field_validator("timeout")
    @classmethod
    def _window(cls, value: float) -> float:
        bounded = _window_bound(value, "Batch.timeout")
        assert bounded is not None
        return bounded


def _window_bound(value: float | None, where: str) -> float | None:
    if value is not None and not 0 < value <= MAX_WINDOW:
        raise ValueError(f"{where}: {value:g} s is out of range; give more than 0 and at most "
                         "7 days")
    return value


@_plain_errors
@dataclass(frozen=True, config=_CONFIG)
class Priority:
    """``run``: CEL giving seconds (-600..600) by which a run jumps ahead of (or behind) others."""

    run: str


@_plain_errors
@dataclass(frozen=True, config=_CONFIG)
class Singleton:
    """One active run per ``key``: ``skip`` the new one, or ``cancel`` the running one."""

    key: str | None = None
    mode: Literal["skip", "cancel"] = "skip"


@_plain_errors
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


@_plain_errors
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


def check_function(function_id: str, config: FunctionConfig) -> None:
    """Everything registration checks of one function, SDK and gateway alike.

    Raises:
        InvalidInput: a trigger's wildcard is misplaced, a cron schedule or its time zone is
            invalid, or an option is not enforced yet.
        ExpressionError: a CEL expression does not compile.
    """
    for trigger in config.triggers:
        if isinstance(trigger, TriggerEvent):
            check_event_pattern(trigger.event, where=f"function {function_id!r}: trigger")
        else:
            try:
                _cron.parse(trigger.cron, trigger.tz)
            except InvalidInput as exc:
                raise InvalidInput(f"function {function_id!r}: TriggerCron: {exc}") from None
    check_expressions(function_id, config)
    check_enforced(function_id, config)
    check_combinations(function_id, config)


def check_event_pattern(pattern: str, *, where: str = "trigger") -> None:
    """Inngest's wildcard rule: ``*`` only as the last character, right after ``/`` or ``.``.

    ``shop/*`` and ``shop/order.*`` match every name with that prefix; ``*`` alone, ``shop*``
    or ``shop/*/paid`` are refused, so a pattern never reaches further than it says. (A
    wildcard never matches the reserved ``tether/`` system events unless it starts with
    ``tether/``: see ``gateway/scheduler/triggers.py``.)

    Raises:
        InvalidInput: naming the pattern and how to write it.
    """
    if "*" not in pattern:
        return
    if pattern == "*":
        raise InvalidInput(
            f"{where} {pattern!r}: '*' alone would match every event; name a prefix ending "
            "in '/' or '.', as in 'shop/*' or 'shop/order.*'"
        )
    if pattern.count("*") > 1 or not pattern.endswith("*") or pattern[-2] not in "/.":
        raise InvalidInput(
            f"{where} {pattern!r}: '*' may only be the last character, right after '/' or "
            "'.', as in 'shop/*' or 'shop/order.*'"
        )


def check_enforced(function_id: str, config: FunctionConfig) -> None:
    """Refuse a function that sets an option the gateway would ignore (:data:`UNENFORCED`).

    Raises:
        InvalidInput: naming every such option, the issue that brings it, and what to do.
    """
    found = [name for name in UNENFORCED
             if name in _OPTION_FIELDS and getattr(config, name) not in (None, [])]
    if found:
        reasons = "; ".join(f"{name} ({UNENFORCED[name]})" for name in found)
        raise InvalidInput(
            f"function {function_id!r}: not enforced by this version of Tether yet, so it is "
            f"refused rather than ignored: {reasons}. Remove the option until its issue lands"
        )


#: Options debounce and batch refuse beside them, and why: each would act per event before
#: the window, or per run after it, with no one meaning a user could rely on (README).
_WINDOW_REFUSES: dict[str, str] = {
    "idempotency": "idempotency keeps one run per key, but a window's run gathers events "
                   "whose keys may differ",
    "rate_limit": "a rate limit would count events or windows, two different meanings",
    "singleton": "a singleton would judge each event or each window, two different meanings",
    "throttle": "throttle reserves a start per run at creation, before the window knows "
                "when it ends",
    "priority": "priority is computed from one event at creation, before the window knows "
                "its events (Inngest refuses it with batch too)",
}


def check_combinations(function_id: str, config: FunctionConfig) -> None:
    """Refuse options that have no single meaning together (README, "Combinations").

    Raises:
        InvalidInput: naming the function, both options and why.
    """
    window = "debounce" if config.debounce is not None else (
        "batch" if config.batch is not None else None)
    if window is None:
        return
    clashes: list[str] = []
    if config.debounce is not None and config.batch is not None:
        clashes.append("debounce with batch: both decide when the run starts and with which "
                       "events")
    for option, why in _WINDOW_REFUSES.items():
        if getattr(config, option) is not None:
            clashes.append(f"{window} with {option}: {why}")
    if any(c.max_queued is not None for c in config.concurrency):
        clashes.append(f"{window} with concurrency max_queued: a window's events join one "
                       "run, so they are not refused one by one; bound the window instead "
                       "(batch max_size, debounce timeout)")
    if config.batch is not None and config.cancel_on:
        clashes.append("batch with cancel_on: one event would cancel a run of many (Inngest "
                       "refuses it too)")
    if clashes:
        raise InvalidInput(f"function {function_id!r}: options that cannot be combined: "
                           + "; ".join(clashes) + ". Remove one option of each pair")


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
    if config.batch is not None:
        found.append(("batch.if_", config.batch.if_, event_only))
    for where, source, allowed in found:
        if source is not None:
            check(source, allowed, where=f"function {function_id!r}: {where}")


#: Options of :class:`FunctionConfig` that :data:`UNENFORCED` may name.
_OPTION_FIELDS = frozenset(FunctionConfig.__dataclass_fields__)

__all__ = [
    "RESERVED_PREFIX",
    "UNENFORCED",
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
    "check_enforced",
    "check_event_pattern",
    "check_expressions",
    "check_function",
    "describe",
]
