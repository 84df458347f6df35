-- The core schema for PostgreSQL: the same tables as SQLite's, plus the gateways that share
-- the database. Times are epoch seconds; JSON values are the bytes the peers sent.

CREATE TABLE apps (
    id            TEXT PRIMARY KEY,
    version       TEXT NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE functions (
    id         TEXT PRIMARY KEY,
    app_id     TEXT NOT NULL,
    config     TEXT NOT NULL,
    active     INTEGER NOT NULL DEFAULT 1,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX functions_by_app ON functions (app_id);

CREATE TABLE events (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    received_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX events_by_id ON events (id, received_at);
CREATE INDEX events_by_name ON events (name, received_at);

CREATE TABLE runs (
    id             TEXT PRIMARY KEY,
    function_id    TEXT NOT NULL,
    status         TEXT NOT NULL,
    fence          BIGINT NOT NULL DEFAULT 0,
    session_id     TEXT,                        -- "{gateway id}.{session}" of the lease holder
    available_at   DOUBLE PRECISION,
    attempt        INTEGER NOT NULL DEFAULT 0,
    lease_losses   INTEGER NOT NULL DEFAULT 0,
    event_ids      TEXT NOT NULL,
    output         BYTEA,
    error          TEXT,
    queued_at      DOUBLE PRECISION NOT NULL,
    started_at     DOUBLE PRECISION,
    ended_at       DOUBLE PRECISION,
    parent_run_id  TEXT,
    parent_step_id TEXT,
    deadline_at    DOUBLE PRECISION,
    state_bytes    BIGINT NOT NULL DEFAULT 0
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
    event_seq BIGINT NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE INDEX run_events_by_event ON run_events (event_seq);

CREATE TABLE steps (
    run_id       TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    output       BYTEA,
    error        TEXT,
    wake_at      DOUBLE PRECISION,
    started_at   DOUBLE PRECISION,
    ended_at     DOUBLE PRECISION,
    child_run_id TEXT,
    PRIMARY KEY (run_id, step_id)
);

CREATE TABLE waits (
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    event_name TEXT NOT NULL,
    if_        TEXT,
    match_path TEXT NOT NULL,
    match_key  TEXT NOT NULL,
    trigger    BYTEA NOT NULL,
    expires_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX waits_by_event ON waits (event_name, match_path, match_key);

-- Gateways sharing this database, and when each last proved it was alive. The leases of a
-- gateway that stops proving it are requeued by another.
CREATE TABLE gateways (
    id           TEXT PRIMARY KEY,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);
