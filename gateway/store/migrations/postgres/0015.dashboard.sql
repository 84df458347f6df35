-- The dashboard (issue 11): see the SQLite migration of the same name.

CREATE INDEX runs_by_function_status ON runs (function_id, status, id);
CREATE INDEX runs_by_status ON runs (status, id, function_id);
CREATE INDEX runs_by_flow_key ON runs (function_id, hold_option, hold_key, status)
    WHERE hold_key IS NOT NULL;

ALTER TABLE steps ADD COLUMN attempt_started_at DOUBLE PRECISION;

CREATE TABLE step_attempts (
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    status     TEXT NOT NULL,
    started_at DOUBLE PRECISION,
    ended_at   DOUBLE PRECISION,
    retry_at   DOUBLE PRECISION,
    error      TEXT,
    PRIMARY KEY (run_id, step_id, attempt)
);

CREATE FUNCTION log_step_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO step_attempts
    VALUES (NEW.run_id, NEW.step_id, NEW.attempts, NEW.status, NEW.attempt_started_at,
            NEW.ended_at, NEW.wake_at, NEW.error)
    ON CONFLICT (run_id, step_id, attempt) DO UPDATE SET
        status = excluded.status, started_at = excluded.started_at,
        ended_at = excluded.ended_at, retry_at = excluded.retry_at, error = excluded.error;
    RETURN NULL;
END
$$;

CREATE TRIGGER step_attempt_logged AFTER INSERT OR UPDATE OF attempts ON steps
FOR EACH ROW WHEN (NEW.kind = 'run' AND (NEW.status <> 'Completed' OR NEW.attempts > 1))
EXECUTE FUNCTION log_step_attempt();
