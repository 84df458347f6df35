"""An Inngest SDK's function configs (the JSON of ``WORKER_CONNECT``) as Tether manifests.

Each option the SDK sends becomes the Tether option with the same meaning, and is then
checked by the same :func:`~protocol.manifest.check_function` as Tether's own SDK (so an
option Tether does not enforce yet is refused there). An option with no Tether equivalent is
refused here, naming it: nothing is silently dropped. Both the SDKs' snake_case (Python) and
camelCase (TypeScript) spellings are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from protocol.errors import InvalidInput
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
    TriggerCron,
    TriggerEvent,
    describe,
)
from protocol.names import RESERVED_PREFIX

#: Keys that only describe the function to Inngest's own server (how to reach it, how to show
#: it): nothing for Tether to enforce.
_DESCRIPTIVE = frozenset({"id", "name", "steps", "triggers"})

#: Inngest's default when ``steps.step.retries`` is absent (as Tether's).
DEFAULT_RETRIES = 3


@dataclass(frozen=True, slots=True)
class InngestFunction:
    """One SDK function: its Inngest slug (how the SDK finds it) and its Tether config."""

    slug: str
    config: FunctionConfig

    @property
    def short_id(self) -> str:
        return self.config.id


def _get(obj: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in obj and obj[name] is not None:
            return obj[name]
    return None


def _short_id(app_id: str, slug: str) -> str:
    """The SDKs name a function ``{app}-{fn}``: Tether's id is ``fn`` under app ``app``."""
    prefix = f"{app_id}-"
    return slug[len(prefix):] if slug.startswith(prefix) and len(slug) > len(prefix) else slug


def _refuse(slug: str, what: str) -> InvalidInput:
    return InvalidInput(f"Inngest function {slug!r}: {what} has no equivalent in Tether, so it "
                        "is refused rather than ignored; remove it to run this app on Tether")


def _period(value: Any) -> Any:
    """Periods travel as strings ("1m"), or seconds as numbers: Tether reads both."""
    return value


#: Inngest's system events and Tether's: the SDKs' ``on_failure`` handlers are functions
#: triggered by ``inngest/function.failed`` for ``event.data.function_id == '<slug>'``.
SYSTEM_EVENTS = {f"inngest/function.{what}": f"{RESERVED_PREFIX}function.{what}"
                 for what in ("finished", "failed", "cancelled", "invoked")}
_FUNCTION_ID = re.compile(r"event\.data\.function_id == '([^']+)'")


def _trigger(app_id: str, slug: str, raw: dict[str, Any]) -> TriggerEvent | TriggerCron:
    if "event" in raw:
        extra = set(raw) - {"event", "expression"}
        if extra:
            raise _refuse(slug, f"trigger option {sorted(extra)}")
        event, expression = raw["event"], raw.get("expression")
        if event in SYSTEM_EVENTS:
            event = SYSTEM_EVENTS[event]
            if isinstance(expression, str):  # Tether names functions app/fn, not app-fn
                expression = _FUNCTION_ID.sub(
                    lambda found: f"event.data.function_id == "
                                  f"'{app_id}/{_short_id(app_id, found.group(1))}'",
                    expression)
        return TriggerEvent(event=event, if_=expression)
    if "cron" in raw:
        if raw.get("jitter"):
            raise _refuse(slug, "cron jitter")
        extra = set(raw) - {"cron", "jitter"}
        if extra:
            raise _refuse(slug, f"trigger option {sorted(extra)}")
        return TriggerCron(cron=raw["cron"])
    raise InvalidInput(f"Inngest function {slug!r}: a trigger needs 'event' or 'cron', got "
                       f"{sorted(raw)}")


def _concurrency(slug: str, raw: Any) -> list[Concurrency]:
    items = raw if isinstance(raw, list) else [raw]
    found = []
    for item in items:
        if isinstance(item, int):
            found.append(Concurrency(limit=item))
            continue
        scope = item.get("scope") or "fn"
        if scope == "app":
            found.append(Concurrency(limit=item["limit"], key=item.get("key"), scope="app"))
        elif scope == "fn":
            found.append(Concurrency(limit=item["limit"], key=item.get("key")))
        else:
            raise _refuse(slug, f"concurrency scope {scope!r} (Tether limits per function "
                                "or per app)")
    return found


def function_config(app_id: str, raw: dict[str, Any]) -> InngestFunction:
    """One function's SDK config as Tether's.

    Raises:
        InvalidInput: an option has no Tether equivalent, or a value is malformed.
    """
    slug = str(raw.get("id") or "")
    if not slug:
        raise InvalidInput(f"app {app_id!r}: a function config has no 'id'")
    try:
        return InngestFunction(slug, _config(app_id, slug, raw))
    except ValidationError as exc:
        raise InvalidInput(f"Inngest function {slug!r}: {describe(exc)}") from None
    except InvalidInput as exc:
        if exc.message.startswith("Inngest function"):
            raise
        raise InvalidInput(f"Inngest function {slug!r}: {exc.message}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"Inngest function {slug!r}: malformed option ({exc!r})") from None


def _config(app_id: str, slug: str, raw: dict[str, Any]) -> FunctionConfig:
    options: dict[str, Any] = {}
    steps = raw.get("steps") or {}
    retries = DEFAULT_RETRIES
    for step in steps.values() if isinstance(steps, dict) else ():
        attempts = _get(step.get("retries") or {}, "attempts")
        if attempts is not None:
            retries = int(attempts)
    options["retries"] = retries
    options["triggers"] = [_trigger(app_id, slug, t) for t in raw.get("triggers") or []]
    failed = SYSTEM_EVENTS["inngest/function.failed"]
    for trigger in options["triggers"]:
        found = _FUNCTION_ID.fullmatch(getattr(trigger, "if_", None) or "")
        if getattr(trigger, "event", None) == failed and found is not None:
            options["on_failure_of"] = found.group(1)
    known = set(_DESCRIPTIVE)
    for keys, build in _OPTIONS:
        value = _get(raw, *keys)
        known.update(keys)
        if value is not None:
            build(slug, value, options)
    extra = sorted(k for k, v in raw.items() if k not in known and v not in (None, [], {}))
    if extra:
        raise _refuse(slug, f"option {', '.join(repr(k) for k in extra)}")
    return FunctionConfig(id=_short_id(app_id, slug), name=str(raw.get("name") or ""),
                          **options)


def _set_concurrency(slug: str, value: Any, options: dict[str, Any]) -> None:
    options["concurrency"] = _concurrency(slug, value)


def _set_throttle(slug: str, value: Any, options: dict[str, Any]) -> None:
    options["throttle"] = Throttle(limit=value["limit"], period=_period(value["period"]),
                                   burst=value.get("burst") or 1, key=value.get("key"))


def _set_rate_limit(slug: str, value: Any, options: dict[str, Any]) -> None:
    options["rate_limit"] = RateLimit(limit=value["limit"], period=_period(value["period"]),
                                      key=value.get("key"))


def _set_debounce(slug: str, value: Any, options: dict[str, Any]) -> None:
    options["debounce"] = Debounce(period=value["period"], key=value.get("key"),
                                   timeout=value.get("timeout"))


def _set_batch(slug: str, value: Any, options: dict[str, Any]) -> None:
    options["batch"] = Batch(max_size=_get(value, "maxSize", "max_size"),
                             timeout=value.get("timeout") or "60s", key=value.get("key"),
                             if_=value.get("if"))


def _set_priority(slug: str, value: Any, options: dict[str, Any]) -> None:
    options["priority"] = Priority(run=value["run"])


def _set_idempotency(slug: str, value: Any, options: dict[str, Any]) -> None:
    options["idempotency"] = str(value)


def _set_singleton(slug: str, value: Any, options: dict[str, Any]) -> None:
    options["singleton"] = Singleton(key=value.get("key"), mode=value.get("mode") or "skip")


def _set_cancel(slug: str, value: Any, options: dict[str, Any]) -> None:
    options["cancel_on"] = [Cancel(event=c["event"], if_=_get(c, "if", "if_exp"),
                                   timeout=c.get("timeout")) for c in value]


def _set_timeouts(slug: str, value: Any, options: dict[str, Any]) -> None:
    options["timeouts"] = Timeouts(start=value.get("start"), finish=value.get("finish"))


_OPTIONS = (
    (("concurrency",), _set_concurrency),
    (("throttle",), _set_throttle),
    (("rateLimit", "rate_limit"), _set_rate_limit),
    (("debounce",), _set_debounce),
    (("batchEvents", "batch_events"), _set_batch),
    (("priority",), _set_priority),
    (("idempotency",), _set_idempotency),
    (("singleton",), _set_singleton),
    (("cancel",), _set_cancel),
    (("timeouts",), _set_timeouts),
)


def app_manifest(app_id: str, version: str, functions_json: bytes
                 ) -> tuple[AppManifest, dict[str, InngestFunction]]:
    """An app's manifest and its functions by slug, from ``AppConfiguration.functions``.

    Raises:
        InvalidInput: the JSON is malformed or a function cannot run on Tether.
    """
    try:
        raw = orjson.loads(functions_json or b"[]")
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"app {app_id!r}: the function configs are not JSON ({exc})") from None
    if not isinstance(raw, list) or not all(isinstance(f, dict) for f in raw):
        raise InvalidInput(f"app {app_id!r}: the function configs must be a JSON list of objects")
    functions = [function_config(app_id, f) for f in raw]
    by_slug = {f.slug: f for f in functions}
    try:
        manifest = AppManifest(id=app_id, version=version,
                               functions=[f.config for f in functions])
    except ValidationError as exc:
        raise InvalidInput(f"app {app_id!r}: {describe(exc)}") from None
    return manifest, by_slug
