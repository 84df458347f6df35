-- Cheaper run-row writes (issue 12, after 0016). SQLite evaluates a partial index's WHERE on
-- every insert of a row and on every update that changes a column it names, and codes
-- ``status IN ('Queued', 'Sleeping', 'Waiting')`` as a temporary b-tree built anew each time
-- (OpenEphemeral, three inserts, a search); the same list as ``status = ... OR ...`` is three
-- comparisons. An insert (a new run is ready) and a lease (the old row) still paid for the
-- lists after 0016's ``available_at IS NOT NULL`` guard. SQLite uses a partial index only when
-- the query's WHERE holds each term of the index's WHERE as an identical expression: the
-- queries that read these indexes (queries/sqlite.sql) write the chain exactly as here, in
-- the order of gateway.runs.READY (tests/integration/test_ready_indexes.py checks both).
-- Keys and guards are unchanged.
DROP INDEX runs_ready;
CREATE INDEX runs_ready
    ON runs (function_id, (CASE WHEN started_at IS NULL THEN 1 ELSE 0 END), available_at)
    WHERE available_at IS NOT NULL
    AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting');
DROP INDEX runs_by_priority;
CREATE INDEX runs_by_priority ON runs (function_id, (available_at - priority), arrival)
    WHERE available_at IS NOT NULL
    AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting');
DROP INDEX runs_cqueue;
CREATE INDEX runs_cqueue ON runs (function_id, cqueue, available_at)
    WHERE cqueue IS NOT NULL
    AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting');
DROP INDEX runs_cqueue_resumed;
CREATE INDEX runs_cqueue_resumed ON runs (function_id, cqueue, available_at)
    WHERE cqueue IS NOT NULL AND available_at IS NOT NULL AND started_at IS NOT NULL
    AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting');
