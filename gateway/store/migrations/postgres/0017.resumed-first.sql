-- Runs already started are leased before runs not yet started: see the SQLite migration of
-- the same name. (The key is a CASE, not ``started_at IS NULL``: PostgreSQL rewrites
-- ``(started_at IS NULL) = false`` to ``started_at IS NOT NULL`` and then cannot match it to
-- the index.)

DROP INDEX runs_ready;
CREATE INDEX runs_ready
    ON runs (function_id, (CASE WHEN started_at IS NULL THEN 1 ELSE 0 END), available_at)
    WHERE status IN ('Queued', 'Sleeping', 'Waiting');
CREATE INDEX runs_cqueue_resumed ON runs (function_id, cqueue, available_at)
    WHERE cqueue IS NOT NULL AND status IN ('Queued', 'Sleeping', 'Waiting')
    AND started_at IS NOT NULL;
