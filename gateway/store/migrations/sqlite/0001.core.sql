-- The core schema: apps, functions, events, runs, their steps, and pending waits.
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
CREATE INDEX events_by_name ON events (name, received_at);

CREATE TABLE runs (
    id             TEXT PRIMARY KEY,
    function_id    TEXT NOT NULL,
    status         TEXT NOT NULL,
    fence          INTEGER NOT NULL DEFAULT 0,  -- bumped on every lease
    session_id     TEXT,                        -- the worker session holding the lease
    available_at   REAL,                        -- may be leased from then on (NULL: not yet)
    attempt        INTEGER NOT NULL DEFAULT 0,  -- of the function body
    lease_losses   INTEGER NOT NULL DEFAULT 0,  -- in a row, without progress
    event_ids      TEXT NOT NULL,               -- JSON array of event ids
    output         BLOB,
    error          TEXT,                        -- {"name", "message", "stack"} as JSON
    queued_at      REAL NOT NULL,
    started_at     REAL,
    ended_at       REAL,
    parent_run_id  TEXT,                        -- set on runs started by step.invoke
    parent_step_id TEXT,
    deadline_at    REAL,                        -- when timeouts.start/finish cancel the run
    state_bytes    INTEGER NOT NULL DEFAULT 0   -- recorded step results, for the state limit
);
CREATE INDEX runs_ready ON runs (function_id, available_at)
    WHERE status IN ('Queued', 'Sleeping', 'Waiting');
CREATE INDEX runs_deadline ON runs (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX runs_by_session ON runs (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX runs_by_function ON runs (function_id, id);
CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;

CREATE TABLE run_events (
    run_id    TEXT NOT NULL,
    position  INTEGER NOT NULL,
    event_seq INTEGER NOT NULL,
    PRIMARY KEY (run_id, position)
) WITHOUT ROWID;
CREATE INDEX run_events_by_event ON run_events (event_seq);

CREATE TABLE steps (
    run_id       TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,                 -- run | sleep | wait | invoke | send_event
    status       TEXT NOT NULL,                 -- Completed | Failed | Retrying | Sleeping | ...
    attempts     INTEGER NOT NULL,
    output       BLOB,
    error        TEXT,
    wake_at      REAL,                          -- retry due, sleep over, wait/invoke timeout
    started_at   REAL,
    ended_at     REAL,
    child_run_id TEXT,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;

-- Runs waiting for an event: step.wait_for_event (kind 'wait') and cancel_on (kind 'cancel').
-- match_path/match_key index the equality of a simple if_ ("async.data.id == event.data.id")
-- so an event only meets the waits it can match; '' means "no equality to index by".
CREATE TABLE waits (
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    event_name TEXT NOT NULL,
    if_        TEXT,
    match_path TEXT NOT NULL,
    match_key  TEXT NOT NULL,
    trigger    BLOB NOT NULL,                   -- the run's event, as ``event`` in if_
    expires_at REAL,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;
CREATE INDEX waits_by_event ON waits (event_name, match_path, match_key);
