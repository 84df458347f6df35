-- Runs already started are leased before runs not yet started (issue 12: 10,000 sleeps woke
-- seconds late behind the backlog of new runs queued before they came due). ``runs_resumed``
-- holds the ready runs that were leased before (woken from a sleep, a wait or an invoke,
-- requeued for a retry or after a lost lease); ``runs_cqueue_resumed`` the same runs of
-- functions with concurrency limits, by queue. A run that never suspends is never in either
-- (it is Queued with no ``started_at``, then Running, then ended): the ordinary path writes no
-- more index entries.

CREATE INDEX runs_resumed ON runs (function_id, available_at)
    WHERE status IN ('Queued', 'Sleeping', 'Waiting') AND started_at IS NOT NULL;
CREATE INDEX runs_cqueue_resumed ON runs (function_id, cqueue, available_at)
    WHERE cqueue IS NOT NULL AND status IN ('Queued', 'Sleeping', 'Waiting')
    AND started_at IS NOT NULL;
