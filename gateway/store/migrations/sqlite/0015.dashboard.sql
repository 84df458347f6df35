-- The dashboard (issue 11). ``runs_by_function_status`` and ``runs_by_status`` serve the runs
-- filtered by status, newest first, with or without a function (ids are ULIDs of the queue
-- time, so a time range is a range of ``id``), and the counts per status, index-only
-- (``function_id`` rides along in ``runs_by_status``). The per-key flow-control counts read
-- ``runs_by_flow_key``, which holds only the runs a key holds back.
-- ``step_attempts`` keeps each attempt of a retried step (when it ran, how it ended, when the
-- next one was due) for the run's timeline. It is filled by triggers on ``steps``, from the
-- attempt's own start (``attempt_started_at``; ``started_at`` stays the first attempt's), and
-- only for steps that fail at least once: a step that succeeds first time costs nothing more.

CREATE INDEX runs_by_function_status ON runs (function_id, status, id);
CREATE INDEX runs_by_status ON runs (status, id, function_id);
CREATE INDEX runs_by_flow_key ON runs (function_id, hold_option, hold_key, status)
    WHERE hold_key IS NOT NULL;

ALTER TABLE steps ADD COLUMN attempt_started_at REAL;

CREATE TABLE step_attempts (
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    attempt    INTEGER NOT NULL,              -- 1-based, as steps.attempts
    status     TEXT NOT NULL,                 -- Retrying | Failed | Completed
    started_at REAL,
    ended_at   REAL,
    retry_at   REAL,                          -- the next attempt's due time (Retrying)
    error      TEXT,
    PRIMARY KEY (run_id, step_id, attempt)
) WITHOUT ROWID;

CREATE TRIGGER step_attempt_inserted AFTER INSERT ON steps
WHEN new.kind = 'run' AND (new.status <> 'Completed' OR new.attempts > 1)
BEGIN
    INSERT OR REPLACE INTO step_attempts
    VALUES (new.run_id, new.step_id, new.attempts, new.status, new.attempt_started_at,
            new.ended_at, new.wake_at, new.error);
END;

CREATE TRIGGER step_attempt_updated AFTER UPDATE OF attempts ON steps
WHEN new.kind = 'run' AND (new.status <> 'Completed' OR new.attempts > 1)
BEGIN
    INSERT OR REPLACE INTO step_attempts
    VALUES (new.run_id, new.step_id, new.attempts, new.status, new.attempt_started_at,
            new.ended_at, new.wake_at, new.error);
END;
