"""A step's attempts (``step_attempts``, the run's timeline), on every backend.

PostgreSQL logs them by a trigger on ``steps``; SQLite's store writes them itself (migration
0021: a trigger ran for every step row). Either way the same rows: one per attempt that failed
or was retried, none for a step done at its first attempt, none more for a resend.
"""

from __future__ import annotations

from tests.integration.test_fresh_rows import attempts_of, leased
from tests.integration.test_store import (  # noqa: F401 (functions: the autouse fixture)
    T0,
    checkpoint,
    cp,
    functions,
    step_done,
    step_failed,
)


def _attempt(step: str, attempt: int, status: str, retry_at: float | None = None,
             error: bool = True) -> dict[str, object]:
    return {"step_id": step, "attempt": attempt, "status": status, "started_at": T0,
            "ended_at": T0 + 0.5, "retry_at": retry_at,
            "error": (f'{{"name": "Boom", "message": "{step} broke", "stack": null}}'
                      if error else None)}


def _shown(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    shown = []
    for row in sorted(rows, key=lambda r: (str(r["step_id"]), int(str(r["attempt"])))):
        if row["error"] is not None:  # JSON text: compared by what it says
            import json
            row = {**row, "error": json.dumps(json.loads(str(row["error"])))}
        shown.append(row)
    return shown


async def test_each_failed_or_retried_attempt_is_one_row(store, db_url):
    (run,) = await leased(store, 1)
    # a: fails (a retry due at T0 + 9); b: done at once (nothing logged); c: fails for good.
    first = await checkpoint(store, T0 + 1, cp(step_failed(run, 1, "a"), retry_at=T0 + 9),
                             cp(step_done(run, 1, "b")),
                             cp(step_failed(run, 1, "c", final=True)))
    assert first.refused == {}
    # a: its second attempt fails and its third is done, in one batch, beside a step done.
    second = await checkpoint(store, T0 + 2,
                              cp(step_failed(run, 1, "a", attempt=1), retry_at=T0 + 3),
                              cp(step_done(run, 1, "d")),
                              cp(step_done(run, 1, "a", attempt=2)))
    assert second.refused == {}
    expected = [_attempt("a", 1, "Retrying", T0 + 9), _attempt("a", 2, "Retrying", T0 + 3),
                _attempt("a", 3, "Completed", error=False), _attempt("c", 1, "Failed")]
    got = _shown(await attempts_of(db_url, run))
    assert got == _shown(expected)
    # Sent again (a reconnect): the ended steps keep their rows, nothing is logged twice.
    again = await checkpoint(store, T0 + 4, cp(step_done(run, 1, "a", attempt=2)),
                             cp(step_failed(run, 1, "c", final=True)),
                             cp(step_failed(run, 1, "a", attempt=1), retry_at=T0 + 5),
                             cp(step_done(run, 1, "b")))
    assert again.refused == {}
    assert _shown(await attempts_of(db_url, run)) == got
