"""A webhook's CEL transform: a third party's request in, an event out. Pure functions.

The transform reads three variables: ``body`` (the request body: parsed JSON; for
``application/x-www-form-urlencoded`` a map of field -> first value; an empty body is
``null``), ``headers`` (lower-cased names -> values, repeated headers joined with ``", "``)
and ``query`` (name -> first value). It must give a map ``{"name": str, "data": map,
"id"?: str, "ts"?: int ms, "user"?: map}``, which is then checked exactly as an event of
``POST /e`` is (:func:`gateway.http.events.parse_events`).

Cost. The CEL binding evaluates comprehension macros (``map``, ``filter``, ``all``,
``exists``, ``exists_one``) in time quadratic in the list's length (measured: 16,000
elements take 8 s), so a transform may not use them: it reshapes a request, it does not
loop over one. The other limits are :mod:`protocol.expressions`' (length, nesting,
operators) and the body's size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import orjson

from protocol.errors import ExpressionError, InvalidInput
from protocol.expressions import compile_expression

VARIABLES = frozenset({"body", "headers", "query"})
#: What a transform's result may hold: an event's fields.
RESULT_FIELDS = ("name", "data", "id", "ts", "user")
_MACROS = ("map", "filter", "all", "exists", "exists_one")
FORM = "application/x-www-form-urlencoded"


def check_transform(source: Any) -> str:
    """Compile a new webhook's transform; return it.

    Raises:
        ExpressionError: it does not compile, is over a limit, reads another variable or
            uses a comprehension macro; the message says which.
    """
    if not isinstance(source, str):
        raise InvalidInput("'transform' must be a CEL expression (a string) building "
                           "{\"name\": ..., \"data\": ...} from body, headers and query")
    try:
        program = compile_expression(source)
    except ExpressionError as exc:
        raise ExpressionError(f"'transform': {exc.message}") from exc
    unknown = sorted(set(program.variables()) - VARIABLES)
    if unknown:
        # The binding lists a comprehension's loop variable among the variables.
        raise ExpressionError(
            f"'transform' reads unknown variable(s) {', '.join(unknown)}: a transform reads "
            f"only body, headers and query, and may not use the macros {', '.join(_MACROS)} "
            "(their cost grows with the square of the list); pick fields directly, e.g. "
            "{\"name\": \"github/\" + headers[\"x-github-event\"], \"data\": body}"
        )
    return source


def request_body(raw: bytes, content_type: str | None) -> Any:
    """The request body as the transform's ``body``.

    Raises:
        InvalidInput: the body is neither JSON nor a form (nor empty).
    """
    if (content_type or "").split(";")[0].strip().lower() == FORM:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise InvalidInput("webhook body is a form that is not UTF-8 text") from None
        return first_values(parse_qsl(text, keep_blank_values=True))
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"webhook body is not valid JSON ({exc}); a webhook takes JSON, "
                           f"or {FORM}") from exc


def first_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A map of name -> first value (the transform sees one string per name)."""
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def apply(source: str, body: Any, headers: dict[str, str], query: dict[str, str]) -> bytes:
    """Evaluate the transform; return the event it builds, as JSON for ``parse_events``.

    Raises:
        InvalidInput: evaluation failed, or the result is not an event's shape.
    """
    program = compile_expression(source)
    try:
        result = program.execute({"body": body, "headers": headers, "query": query})
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
        raise
    except BaseException as exc:  # the binding may raise a panic, a BaseException
        raise InvalidInput(f"the webhook's transform failed on this request: "
                           f"{type(exc).__name__}: {str(exc)[:300]}") from None
    if not isinstance(result, dict):
        raise InvalidInput(f"the webhook's transform gave {type(result).__name__}, not a map "
                           "{\"name\": ..., \"data\": ...}")
    unknown = sorted(str(k) for k in result if k not in RESULT_FIELDS)
    if unknown:
        raise InvalidInput(f"the webhook's transform gave unknown field {unknown[0][:60]!r}; "
                           f"an event has {', '.join(RESULT_FIELDS)}")
    try:
        return orjson.dumps(result)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidInput(f"the webhook's transform gave a value JSON cannot hold: {exc}"
                           ) from None
