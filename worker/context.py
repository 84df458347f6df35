"""``ctx``: what a function receives: its event(s), ids, attempt, steps and a logger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from worker.app import Event
from worker.plan import current_step
from worker.steps import Step, SyncStep

if TYPE_CHECKING:
    from worker.runner import RunExecution


_NO_VALUES: dict[str, Any] = {}


class ReplayAwareLogger:
    """``ctx.logger``: a structlog logger bound to the run, silent while replaying.

    Each line carries run_id, function_id and attempt, and step_id inside a step; the
    worker's instance_id and session_id come from the context (:mod:`worker.connection`).

    Code between memoized steps runs again on every replay; its log lines would repeat each
    time, so they are dropped until the run reaches a step it has not done before.
    """

    __slots__ = ("_exec", "_log", "_values")

    def __init__(self, execution: RunExecution, values: dict[str, Any] | None = None) -> None:
        self._exec = execution
        self._values = values or _NO_VALUES  # never changed: bind() makes a new dict
        self._log: Any = None  # bound on first use: most runs never log

    def bind(self, **values: Any) -> ReplayAwareLogger:
        return ReplayAwareLogger(self._exec, {**self._values, **values})

    def _emit(self, level: str, event: str, **kw: Any) -> None:
        step = current_step.get()
        if self._exec.replaying and step is None:
            return
        if step is not None:  # inside a step: its id and attempt
            kw.setdefault("step_id", step.id)
            kw.setdefault("attempt", step.attempt)
        else:  # the function body: the run's attempt
            kw.setdefault("attempt", self._exec.attempt)
        if self._log is None:
            self._log = structlog.get_logger("tether.user").bind(
                run_id=self._exec.run_id, function_id=self._exec.function.id, **self._values)
        getattr(self._log, level)(event, **kw)

    def debug(self, event: str, **kw: Any) -> None:
        self._emit("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._emit("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._emit("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._emit("error", event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._emit("exception", event, **kw)


class Context:
    """Given to every function call.

    Attributes:
        event: the triggering event.
        events: every event of the run (more than one for batches).
        run_id: this run's id.
        function_id: ``"{app_id}/{fn_id}"``.
        step: the step API (awaitable in ``async def`` functions, blocking in ``def`` ones).
        logger: a structlog logger bound to the run, silent for replayed code.
    """

    def __init__(self, execution: RunExecution) -> None:
        self._exec = execution
        self.events: list[Event] = execution.events
        self.event: Event = execution.events[0] if execution.events else Event(name="")
        self.run_id = execution.run_id
        self.function_id = execution.function.id
        self.step: Any = Step(execution) if execution.function.is_async else SyncStep(execution)
        self.logger = ReplayAwareLogger(execution)

    @property
    def attempt(self) -> int:
        """0-based attempt of the step running now, or of the function body outside steps."""
        step = current_step.get()
        return self._exec.attempt if step is None else step.attempt
