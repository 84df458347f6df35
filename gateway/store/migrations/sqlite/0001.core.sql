-- The core schema: apps, functions, events, runs and their steps.
-- Times are epoch seconds (REAL); JSON values are stored as the bytes the peers sent.

CREATE TABLE apps (
    id            TEXT PRIMARY KEY,
    version       TEXT NOT NULL,
    registered_at REAL NOT NULL
);

CREATE TABLE functions (
    id         TEXT PRIMARY KEY,            -- "{app_id}/{fn_id}"
    app_id     TEXT NOT NULL,
    config     TEXT NOT NULL,               -- FunctionConfig as JSON
    active     INTEGER NOT NULL DEFAULT 1,
    updated_at REAL NOT NULL
);
CREATE INDEX functions_by_app ON functions (app_id);

CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    payload     BLOB NOT NULL,              -- {"name", "data", "id", "ts", "user"} as JSON
    received_at REAL NOT NULL
);
CREATE INDEX events_by_id ON events (id, received_at);

CREATE TABLE runs (
    id           TEXT PRIMARY KEY,
    function_id  TEXT NOT NULL,
    status       TEXT NOT NULL,
    fence        INTEGER NOT NULL DEFAULT 0,   -- bumped on every lease
    session_id   TEXT,                         -- the worker session holding the lease
    available_at REAL NOT NULL,                -- a Queued run may be leased from then on
    attempt      INTEGER NOT NULL DEFAULT 0,   -- of the function body
    lease_losses INTEGER NOT NULL DEFAULT 0,   -- in a row, without progress
    event_ids    TEXT NOT NULL,                -- JSON array of event ids
    output       BLOB,
    error        TEXT,                         -- {"name", "message", "stack"} as JSON
    queued_at    REAL NOT NULL,
    started_at   REAL,
    ended_at     REAL
);
CREATE INDEX runs_queue ON runs (function_id, available_at) WHERE status = 'Queued';
CREATE INDEX runs_wakeup ON runs (available_at) WHERE status = 'Queued';
CREATE INDEX runs_by_session ON runs (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX runs_by_function ON runs (function_id, id);
CREATE INDEX runs_by_status ON runs (status, id);

CREATE TABLE run_events (
    run_id    TEXT NOT NULL,
    position  INTEGER NOT NULL,
    event_seq INTEGER NOT NULL,
    PRIMARY KEY (run_id, position)
) WITHOUT ROWID;
CREATE INDEX run_events_by_event ON run_events (event_seq);

CREATE TABLE steps (
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    status     TEXT NOT NULL,                  -- Completed | Failed | Retrying
    attempts   INTEGER NOT NULL,
    output     BLOB,
    error      TEXT,
    retry_at   REAL,
    started_at REAL,
    ended_at   REAL,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;
