-- Flow control, throttle and priority (issue 9). ``throttle_tat`` keeps each throttle key's
-- GCRA state (its theoretical arrival time), read and moved by the transaction that admits a
-- run (gateway/flow/throttle.py). A run records what holds it back (``hold_option``,
-- ``hold_key``: the API's "waiting"), its priority in seconds and its arrival (the highest
-- seq of its events): a function with a priority claims its ready runs by
-- ``(available_at - priority, arrival)``, through ``runs_by_priority``.

CREATE TABLE throttle_tat (
    function_id TEXT NOT NULL,
    key_hash    TEXT NOT NULL,              -- gateway/flow/keys.py
    tat         REAL,                       -- NULL: never started
    PRIMARY KEY (function_id, key_hash)
) WITHOUT ROWID;

ALTER TABLE runs ADD COLUMN hold_option TEXT;
ALTER TABLE runs ADD COLUMN hold_key TEXT;
ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN arrival INTEGER;
CREATE INDEX runs_by_priority ON runs (function_id, (available_at - priority), arrival)
    WHERE status IN ('Queued', 'Sleeping', 'Waiting');
