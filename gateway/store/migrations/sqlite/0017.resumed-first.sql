-- Runs already started are leased before runs not yet started (issue 12: 10,000 sleeps woke
-- seconds late behind the backlog of new runs queued before they came due;
-- gateway/scheduler/order.py). ``runs_ready`` now keys the ready runs of a function by whether
-- they were ever leased (0: started before, woken from a sleep, a wait or an invoke, requeued
-- for a retry or after a lost lease; 1: not yet started), then by ``available_at``: one seek
-- reads either kind in order, and a run enters and leaves the index exactly as before, so the
-- ordinary path writes nothing more (a partial index of started runs, which no ordinary run
-- enters, still cost every lease and ending about 3 µs). The expression must be written the
-- same way in the queries that use it. ``runs_cqueue_resumed`` holds the started ready runs of
-- functions with concurrency limits, by queue (its condition starts with ``cqueue IS NOT
-- NULL``: runs without limits pay nothing measurable);
-- Both test ``available_at IS NOT NULL`` before the status list, as 0016 does: leased and
-- ended runs skip it. ``runs_cqueue`` stays as it was, since its skip-scan must not wade through a key's sleepers.

DROP INDEX runs_ready;
CREATE INDEX runs_ready
    ON runs (function_id, (CASE WHEN started_at IS NULL THEN 1 ELSE 0 END), available_at)
    WHERE available_at IS NOT NULL AND status IN ('Queued', 'Sleeping', 'Waiting');
CREATE INDEX runs_cqueue_resumed ON runs (function_id, cqueue, available_at)
    WHERE cqueue IS NOT NULL AND available_at IS NOT NULL AND started_at IS NOT NULL
    AND status IN ('Queued', 'Sleeping', 'Waiting');
