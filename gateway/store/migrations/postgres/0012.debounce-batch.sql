-- Flow control, debounce and batch (issue 9). ``flow_windows`` holds each key's open window:
-- the pending run that will start with its events (the run's row and ``run_events`` are the
-- window's content, its ``available_at`` the window's deadline), when the window opened and
-- when it is due. The row is the lock (taken with an upsert, held until commit) that
-- serialises a key's events across gateways; a row whose run has started (or whose deadline
-- has passed) is a closed window: the next event replaces it, and sweeps drop it.

CREATE TABLE flow_windows (
    function_id TEXT NOT NULL,
    key_hash    TEXT NOT NULL,
    run_id      TEXT,
    first_at    DOUBLE PRECISION,
    deadline    DOUBLE PRECISION,
    PRIMARY KEY (function_id, key_hash)
);

CREATE INDEX flow_windows_due ON flow_windows (function_id, deadline);
