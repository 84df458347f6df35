"""CEL expressions (``if_`` filters, keys, priorities): compile once, evaluate many times.

Both sides use this module: the worker compiles every expression when the function is
declared, so a typo fails at import time; the gateway compiles them again when the app
registers and evaluates them against events. Compiled programs are cached by source.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import cel

from protocol.errors import ExpressionError


@lru_cache(maxsize=50_000)
def compile_expression(source: str) -> Any:
    """Return the compiled program for ``source``.

    Raises:
        ExpressionError: the expression does not parse; the message shows where.
    """
    if not source.strip():
        raise ExpressionError("empty expression; write a CEL expression such as event.data.x == 1")
    try:
        return cel.compile(source)
    except Exception as exc:  # the binding raises ValueError, or others on odd input
        raise ExpressionError(f"invalid CEL expression {source!r}: {exc}") from exc


def check(source: str, allowed: frozenset[str] | set[str], *, where: str) -> None:
    """Compile ``source`` and check it reads only the variables in ``allowed``.

    Raises:
        ExpressionError: naming ``where`` the expression sits, so the user can find it.
    """
    try:
        program = compile_expression(source)
    except ExpressionError as exc:
        raise ExpressionError(f"{where}: {exc.message}") from exc
    unknown = sorted(set(program.variables()) - set(allowed))
    if unknown:
        raise ExpressionError(
            f"{where}: {source!r} reads unknown variable(s) {', '.join(unknown)}; "
            f"only {', '.join(sorted(allowed))} are defined here"
        )


def evaluate(source: str, variables: dict[str, Any]) -> Any:
    """Evaluate ``source`` with ``variables`` (``event``, ``async``, ...).

    Raises:
        ExpressionError: compilation failed, or evaluation did (a missing field, a type error).
    """
    program = compile_expression(source)
    try:
        return program.execute(variables)
    except Exception as exc:  # KeyError for a missing field, TypeError, RuntimeError...
        raise ExpressionError(
            f"{source!r} could not be evaluated: {type(exc).__name__}: {exc}"
        ) from exc


def matches(source: str | None, variables: dict[str, Any]) -> bool:
    """True when there is no filter, or the filter evaluates to exactly ``True``.

    A filter that fails to evaluate (say, it reads a field the event lacks) does not match.
    """
    if source is None:
        return True
    try:
        return evaluate(source, variables) is True
    except ExpressionError:
        return False
