"""Which functions an event starts: by name (exact or ``prefix*``), then by CEL ``if_``.

Exact names are a dict lookup and prefixes a short list, so matching costs the same whatever
the number of functions that listen for other names.

Rule: a wildcard matches a reserved ``tether/`` system event only when its prefix starts with
``tether/`` itself. Registration refuses ``*`` alone or after anything but ``/`` and ``.``
(``protocol.manifest.check_event_pattern``), so only functions stored before that rule could
try; they keep matching their own events, never the gateway's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from protocol.expressions import matches
from protocol.manifest import FunctionConfig, TriggerEvent
from protocol.names import is_reserved as _reserved


@dataclass(frozen=True, slots=True)
class _Listener:
    function_id: str
    if_: str | None


class TriggerIndex:
    """Event triggers of the active functions, rebuilt when an app registers."""

    def __init__(self) -> None:
        self._by_function: dict[str, list[TriggerEvent]] = {}
        self._exact: dict[str, list[_Listener]] = {}
        self._prefixes: list[tuple[str, _Listener]] = []

    def set_function(self, function_id: str, config: FunctionConfig | None) -> None:
        """Add, replace or (with ``None``) remove one function's triggers."""
        if config is None:
            self._by_function.pop(function_id, None)
        else:
            self._by_function[function_id] = [
                t for t in config.triggers if isinstance(t, TriggerEvent)
            ]
        self._rebuild()

    def _rebuild(self) -> None:
        exact: dict[str, list[_Listener]] = {}
        prefixes: list[tuple[str, _Listener]] = []
        for function_id, triggers in self._by_function.items():
            for trigger in triggers:
                listener = _Listener(function_id, trigger.if_)
                if trigger.event.endswith("*"):
                    prefixes.append((trigger.event[:-1], listener))
                else:
                    exact.setdefault(trigger.event, []).append(listener)
        self._exact, self._prefixes = exact, prefixes

    def _prefixes_of(self, name: str) -> list[tuple[str, _Listener]]:
        if _reserved(name):
            return [(p, lst) for p, lst in self._prefixes
                    if name.startswith(p) and _reserved(p)]
        return [(p, lst) for p, lst in self._prefixes if name.startswith(p)]

    def listens(self, name: str) -> bool:
        """Does any function trigger on ``name`` (whatever its filter)?"""
        return name in self._exact or bool(self._prefixes and self._prefixes_of(name))

    def match(self, name: str, event: dict[str, Any]) -> list[str]:
        """Function ids to start for ``event`` (each at most once, in a stable order)."""
        listeners: Iterable[_Listener] = self._exact.get(name, ())
        if self._prefixes:
            listeners = [*listeners, *(lst for _, lst in self._prefixes_of(name))]
        out: list[str] = []
        variables: dict[str, Any] | None = None
        for listener in listeners:
            if listener.function_id in out:
                continue
            if listener.if_ is not None:
                variables = variables or {"event": event}
                if not matches(listener.if_, variables):
                    continue
            out.append(listener.function_id)
        return out

