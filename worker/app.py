"""``App`` and ``@app.function``: declare durable functions and their options.

Options are validated when the decorator runs, so a bad trigger, duration or CEL expression
fails at import time with a message that names the function, not at the first event.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from protocol.errors import InvalidInput, TetherError
from protocol.manifest import (
    AppManifest,
    Batch,
    Cancel,
    Concurrency,
    Debounce,
    FunctionConfig,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    Trigger,
    TriggerEvent,
    check_function,
    describe,
)
from protocol.names import FUNCTION_FAILED
from worker import serde

Handler = Callable[..., Any]

#: Event name of the system event that ``on_failure`` handlers are triggered by.


@dataclass(frozen=True)
class Event:
    """An event: the payload type everywhere (triggers, ``send``, ``send_event``, waits)."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    ts: int | None = None  # milliseconds since the epoch
    user: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "data": self.data}
        for key in ("id", "ts", "user"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, raw: bytes | dict[str, Any]) -> Event:
        obj = orjson.loads(raw) if isinstance(raw, bytes) else raw
        if cls is not Event:  # a subclass may have its own __init__ or __post_init__
            return cls(name=obj["name"], data=obj.get("data") or {}, id=obj.get("id"),
                       ts=obj.get("ts"), user=obj.get("user"))
        # Every run parses its events: the frozen dataclass's __init__ sets each field
        # through object.__setattr__, which costs three times as much as filling __dict__.
        event = object.__new__(Event)
        event.__dict__.update(name=obj["name"], data=obj.get("data") or {}, id=obj.get("id"),
                              ts=obj.get("ts"), user=obj.get("user"))
        return event


@dataclass(frozen=True)
class Function:
    """A declared function: its gateway-facing config and the Python callable."""

    app_id: str
    config: FunctionConfig
    handler: Handler
    is_async: bool

    @functools.cached_property
    def id(self) -> str:
        """The full id, ``"{app_id}/{fn_id}"`` (asked several times per run: made once)."""
        return f"{self.app_id}/{self.config.id}"

    @property
    def retries(self) -> int:
        return self.config.retries

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling the decorated name calls the original function (handy in tests)."""
        return self.handler(*args, **kwargs)


class App:
    """A set of functions served together by workers, under one app id.

    Args:
        id: the app id; function ids are ``"{id}/{fn_id}"``.
        version: a label for this deployment; the gateway prefers workers on the newest.
        api_url: where :meth:`send` posts events (default ``TETHER_API_URL`` or
            ``http://127.0.0.1:8288``).
        event_key: the key :meth:`send` uses (default ``TETHER_EVENT_KEY`` or ``"dev"``).
    """

    def __init__(
        self,
        id: str,
        *,
        version: str = "",
        api_url: str | None = None,
        event_key: str | None = None,
    ) -> None:
        AppManifest(id=id)  # validate the id now
        self.id = id
        self.version = version
        self.api_url = api_url
        self.event_key = event_key
        self.functions: dict[str, Function] = {}

    def function(
        self,
        handler: Handler | None = None,
        /,
        *,
        id: str | None = None,
        name: str = "",
        trigger: Trigger | None = None,
        triggers: Sequence[Trigger] = (),
        retries: int = 4,
        concurrency: Concurrency | int | Sequence[Concurrency] | None = None,
        throttle: Throttle | None = None,
        rate_limit: RateLimit | None = None,
        debounce: Debounce | None = None,
        batch: Batch | None = None,
        priority: Priority | None = None,
        idempotency: str | None = None,
        singleton: Singleton | None = None,
        cancel_on: Sequence[Cancel] = (),
        timeouts: Timeouts | None = None,
        on_failure: Handler | None = None,
    ) -> Any:
        """Declare a durable function; use as ``@app.function(...)`` (or bare ``@app.function``).

        Every option has the meaning of SPEC §2 (and of Inngest's options of the same name).
        ``id`` defaults to the Python name with dashes; ``retries`` counts attempts after the
        first, per step; the function body's count starts again when a step completes.
        ``on_failure`` runs once the function has failed for good. Options the gateway
        does not enforce yet (``protocol.manifest.UNENFORCED``: flow control)
        are refused here rather than ignored.

        Raises:
            InvalidInput: an option is invalid or not enforced yet, a trigger's wildcard is
                misplaced, or the id is already taken in this app.
            ExpressionError: a CEL expression does not compile.
        """
        options: dict[str, Any] = {
            "id": id, "name": name, "trigger": trigger, "triggers": triggers,
            "retries": retries, "concurrency": concurrency, "throttle": throttle,
            "rate_limit": rate_limit, "debounce": debounce, "batch": batch,
            "priority": priority, "idempotency": idempotency, "singleton": singleton,
            "cancel_on": cancel_on, "timeouts": timeouts, "on_failure": on_failure,
        }
        if handler is not None:
            return self._declare(handler, options)
        return lambda fn: self._declare(fn, options)

    def _declare(self, handler: Handler, options: dict[str, Any]) -> Function:
        if isinstance(handler, Function):
            raise InvalidInput(f"{handler.id} is already a Tether function")
        fn_id = options.pop("id", None) or handler.__name__.replace("_", "-")
        on_failure = options.pop("on_failure", None)
        config = _config(fn_id, options, handler)
        function = self._add(config, handler)
        if on_failure is not None:
            failure_id = f"{fn_id}-failure"
            self._add(
                FunctionConfig(
                    id=failure_id,
                    name=f"{config.name or fn_id} (on failure)",
                    triggers=[TriggerEvent(
                        FUNCTION_FAILED, if_=f"event.data.function_id == '{self.id}/{fn_id}'"
                    )],
                    retries=0,
                    on_failure_of=f"{self.id}/{fn_id}",
                    kind="async" if inspect.iscoroutinefunction(on_failure) else "sync",
                ),
                on_failure,
            )
        return function

    def _add(self, config: FunctionConfig, handler: Handler) -> Function:
        if config.id in self.functions:
            raise InvalidInput(f"function id {config.id!r} is declared twice in app {self.id!r}")
        check_function(f"{self.id}/{config.id}", config)
        function = Function(self.id, config, handler, inspect.iscoroutinefunction(handler))
        self.functions[config.id] = function
        return function

    def manifest(self) -> AppManifest:
        """What the worker declares to the gateway for this app."""
        return AppManifest(
            id=self.id, version=self.version, functions=[f.config for f in self.functions.values()]
        )

    # --- sending events ------------------------------------------------------------------

    async def send(
        self, events: Event | Sequence[Event], *, api_url: str | None = None,
        event_key: str | None = None,
    ) -> list[str]:
        """Send events to the gateway's event API; returns their ids once stored durably.

        Raises:
            TetherError: the gateway refused the events or could not be reached.
        """
        return await asyncio.to_thread(self.send_sync, events, api_url=api_url,
                                       event_key=event_key)

    def send_sync(
        self, events: Event | Sequence[Event], *, api_url: str | None = None,
        event_key: str | None = None,
    ) -> list[str]:
        """Blocking :meth:`send`, for code that has no event loop.

        Event data is encoded as step results are: datetimes, UUIDs and dataclasses become
        their JSON forms.

        Raises:
            InvalidInput: an event holds a value JSON cannot (a set, bytes, an object).
            TetherError: the gateway refused the events or could not be reached.
        """
        items = [events] if isinstance(events, Event) else list(events)
        url = (api_url or self.api_url or os.environ.get("TETHER_API_URL")
               or "http://127.0.0.1:8288").rstrip("/")
        key = event_key or self.event_key or os.environ.get("TETHER_EVENT_KEY") or "dev"
        try:
            body = orjson.dumps([e.to_json() for e in items], option=serde.OPTIONS)
        except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
            raise InvalidInput(f"app.send: the events cannot be sent: {exc}; {serde.HINT}"
                               ) from exc
        request = urllib.request.Request(
            f"{url}/e/{key}", data=body, method="POST",
            headers={"Content-Type": "application/json", **trace_headers()},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                ids: list[str] = json.loads(response.read())["ids"]
                return ids
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("error", "")
            except ValueError:
                detail = ""
            raise TetherError(f"the gateway refused the events ({exc.code}): {detail}") from exc
        except OSError as exc:
            raise TetherError(f"could not reach the gateway at {url}: {exc}") from exc


def trace_headers() -> dict[str, str]:
    """The caller's trace context (W3C ``traceparent``), so the runs continue its trace.

    Only when OpenTelemetry is loaded already (someone traces in this process): sending an
    event never imports it, and the propagators configured there (``OTEL_PROPAGATORS``) apply.
    """
    if "opentelemetry.trace" not in sys.modules:
        return {}
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def _config(fn_id: str, options: dict[str, Any], handler: Handler) -> FunctionConfig:
    trigger = options.pop("trigger", None)
    triggers = list(options.pop("triggers", ()) or ())
    if trigger is not None:
        triggers.insert(0, trigger)
    concurrency = options.pop("concurrency", None)
    if isinstance(concurrency, int):
        concurrency = [Concurrency(limit=concurrency)]
    elif isinstance(concurrency, Concurrency):
        concurrency = [concurrency]
    try:
        return FunctionConfig(
            id=fn_id,
            triggers=triggers,
            concurrency=list(concurrency or []),
            cancel_on=list(options.pop("cancel_on", ()) or ()),
            kind="async" if inspect.iscoroutinefunction(handler) else "sync",
            **options,
        )
    except TetherError:
        raise
    except ValidationError as exc:
        raise InvalidInput(f"function {fn_id!r}: {describe(exc)}") from None
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"function {fn_id!r}: {exc}") from exc

