-- Webhooks (POST /webhooks/{id}): a CEL transform turns a third party's request into an
-- event. ``verify`` is NULL or {"scheme", "secret", "header"} as JSON: the secret must be
-- kept as given to check HMAC signatures.
-- events_by_name_seq serves the event log (GET /v1/events?name=), newest first by seq.

CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,            -- 128 random bits: the capability to post
    name       TEXT NOT NULL,
    transform  TEXT NOT NULL,               -- CEL over body, headers, query
    verify     TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX events_by_name_seq ON events (name, seq);
