-- Runs already started are leased before runs not yet started: see the SQLite migration of
-- the same name.

CREATE INDEX runs_resumed ON runs (function_id, available_at)
    WHERE status IN ('Queued', 'Sleeping', 'Waiting') AND started_at IS NOT NULL;
CREATE INDEX runs_cqueue_resumed ON runs (function_id, cqueue, available_at)
    WHERE cqueue IS NOT NULL AND status IN ('Queued', 'Sleeping', 'Waiting')
    AND started_at IS NOT NULL;
