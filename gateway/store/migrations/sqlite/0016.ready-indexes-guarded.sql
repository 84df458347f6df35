-- Cheaper run-row writes (issue 12). SQLite evaluates a partial index's WHERE on every write
-- that changes a column it names, and codes ``status IN ('Queued', 'Sleeping', 'Waiting')`` as
-- a temporary b-tree built anew each time (three inserts, then a search): a lease or an end
-- paid four of them for ``runs_ready`` and ``runs_by_priority`` (the old row's and the new
-- row's), about 7 µs of the writer's CPU per write. A run leased or ended has no
-- ``available_at`` (lease_run and end_run clear it), so a test of that column first skips the
-- list for those rows. The queries that read these indexes all bound ``available_at``, which
-- implies it is not NULL: they use them as before.
DROP INDEX runs_ready;
CREATE INDEX runs_ready ON runs (function_id, available_at)
    WHERE available_at IS NOT NULL AND status IN ('Queued', 'Sleeping', 'Waiting');
DROP INDEX runs_by_priority;
CREATE INDEX runs_by_priority ON runs (function_id, (available_at - priority), arrival)
    WHERE available_at IS NOT NULL AND status IN ('Queued', 'Sleeping', 'Waiting');
