"""CEL expressions (``if_`` filters, keys, priorities): compile once, evaluate many times.

Both sides use this module: the worker compiles every expression when the function is
declared, so a typo fails at import time; the gateway compiles them again when the app
registers and evaluates them against events. Compiled programs are cached by source.

Limits. The CEL binding parses and evaluates recursively in native code, so a deep enough
expression overflows the thread's stack and kills the process (measured: a chain of ~16,000
member accesses or ``+`` on an 8 MiB main-thread stack, ~2,000 on a 1 MiB thread stack, ~700
nested calls on 256 KiB). Every source is therefore measured before the binding sees it
(:func:`check_size`): at most :data:`MAX_LENGTH` characters, :data:`MAX_NESTING` levels of
brackets and :data:`MAX_OPERATORS` operators (each member access, index, call and operator,
outside string literals, bounds one level of the syntax tree). Legitimate filters use a few
dozen at most.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import cel

from protocol.errors import ExpressionError

#: The longest expression accepted, in characters (README "Security model" states it).
MAX_LENGTH = 4096
#: Deepest nesting of ``(``, ``[`` and ``{``.
MAX_NESTING = 32
#: Most operator characters (``.``, ``[``, ``(``, ``+``, ``&``, ``=``, ...) outside strings: an
#: upper bound on the syntax tree's depth, which is what the binding recurses over.
MAX_OPERATORS = 256

_OPERATORS = frozenset(".[({+-*/%!<>=&|?:")
_OPEN, _CLOSE = frozenset("([{"), frozenset(")]}")


def check_size(source: str) -> None:
    """Refuse an expression too long or too deep to hand to the CEL binding safely.

    Runs in one pass over the text, skipping string literals (``'...'``, ``"..."``, triple
    quoted, with backslash escapes), so a long string constant is only bounded by length.

    Raises:
        ExpressionError: saying which limit is exceeded and by how much.
    """
    if len(source) > MAX_LENGTH:
        raise ExpressionError(
            f"CEL expression too long: {len(source)} characters > {MAX_LENGTH} limit "
            f"({_head(source)}); filter on fewer fields, or compute a value in the event data"
        )
    depth = deepest = operators = 0
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c in "'\"":
            raw = i > 0 and source[i - 1] in "rR"  # r'\d': a backslash escapes nothing
            quote = c * 3 if source.startswith(c * 3, i) else c
            i += len(quote)
            while i < n and not source.startswith(quote, i):
                i += 2 if source[i] == "\\" and not raw else 1
            i += len(quote)
            continue
        if c in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif c in _CLOSE:
            depth -= 1
        if c in _OPERATORS and not (c in "=&|" and i > 0 and source[i - 1] in "=!<>&|"):
            operators += 1  # ``==``, ``&&``, ``<=``... count once
        i += 1
    if deepest > MAX_NESTING:
        raise ExpressionError(
            f"CEL expression nested too deeply: {deepest} levels of brackets > {MAX_NESTING} "
            f"limit ({_head(source)})"
        )
    if operators > MAX_OPERATORS:
        raise ExpressionError(
            f"CEL expression too complex: {operators} operators and member accesses > "
            f"{MAX_OPERATORS} limit ({_head(source)}); split the condition or precompute it"
        )


def _head(source: str) -> str:
    return f"starts {source[:40]!r}" if len(source) > 40 else repr(source)


@lru_cache(maxsize=50_000)
def compile_expression(source: str) -> Any:
    """Return the compiled program for ``source``.

    Raises:
        ExpressionError: the expression is over a limit (:func:`check_size`), or does not
            parse; the message shows where.
    """
    if not source.strip():
        raise ExpressionError("empty expression; write a CEL expression such as event.data.x == 1")
    check_size(source)
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
