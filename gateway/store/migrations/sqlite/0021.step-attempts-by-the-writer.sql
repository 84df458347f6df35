-- The attempts of a step (``step_attempts``) are written by the store's writer, no longer by
-- triggers on ``steps`` (issue 12, goal 1). A trigger's program runs for every row the
-- statement writes, its WHEN tested inside it, so each step row of every run paid for it
-- (about 0.5 µs of the writer's CPU a row) though only a failed or retried step logs an
-- attempt. ``SQLiteDb`` now writes a step that may log one (not a first attempt that
-- completed) alone, and when it changed a row, logs the attempt from the row as written:
-- what ``step_attempt_inserted`` and ``step_attempt_updated`` did (gateway/store/sqlite.py,
-- ``log_step_attempt`` in queries/sqlite.sql). PostgreSQL keeps its trigger.
DROP TRIGGER step_attempt_inserted;
DROP TRIGGER step_attempt_updated;
