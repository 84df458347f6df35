-- A failed attempt sent again (a worker that reconnects resends what was not acknowledged) is
-- upserted into ``steps`` unchanged, which fires ``step_attempt_updated``. Its ``INSERT OR
-- REPLACE`` then met the attempt's own row: SQLite lets the firing statement's conflict policy
-- (the upsert's ABORT) override a trigger's OR clause, so the replace became a UNIQUE failure
-- that failed the run. An upsert inside the trigger is not overridden: the attempt's row is
-- written once, whatever the statement that fired it.
DROP TRIGGER step_attempt_inserted;
DROP TRIGGER step_attempt_updated;

CREATE TRIGGER step_attempt_inserted AFTER INSERT ON steps
WHEN new.kind = 'run' AND (new.status <> 'Completed' OR new.attempts > 1)
BEGIN
    INSERT INTO step_attempts
    VALUES (new.run_id, new.step_id, new.attempts, new.status, new.attempt_started_at,
            new.ended_at, new.wake_at, new.error)
    ON CONFLICT (run_id, step_id, attempt) DO UPDATE SET
        status = excluded.status, started_at = excluded.started_at,
        ended_at = excluded.ended_at, retry_at = excluded.retry_at, error = excluded.error;
END;

CREATE TRIGGER step_attempt_updated AFTER UPDATE OF attempts ON steps
WHEN new.kind = 'run' AND (new.status <> 'Completed' OR new.attempts > 1)
BEGIN
    INSERT INTO step_attempts
    VALUES (new.run_id, new.step_id, new.attempts, new.status, new.attempt_started_at,
            new.ended_at, new.wake_at, new.error)
    ON CONFLICT (run_id, step_id, attempt) DO UPDATE SET
        status = excluded.status, started_at = excluded.started_at,
        ended_at = excluded.ended_at, retry_at = excluded.retry_at, error = excluded.error;
END;
