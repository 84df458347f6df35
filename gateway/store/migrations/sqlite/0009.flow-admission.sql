-- Flow control at admission (issue 9): rate limit, idempotency, singleton.
-- ``flow_keys`` holds one number per (function, option, key): the rate limit's theoretical
-- arrival time (GCRA) or the time an idempotency key frees up; a singleton key has a row
-- too, valued at its last admission: it is the lock that serialises the key's admissions
-- across gateways. A row whose time has passed decides like no row: they are swept.
-- A run remembers its singleton key (its live run is found by it) and, when flow control
-- skipped it, why ({"reason", "key", "message"} as JSON: the API's ``skipped`` object).

CREATE TABLE flow_keys (
    function_id TEXT NOT NULL,
    kind        TEXT NOT NULL,              -- 'rate_limit', 'idempotency' or 'singleton'
    key_hash    TEXT NOT NULL,              -- gateway.flow.keys: SHA-256 hex
    until_at    REAL,                       -- epoch seconds: TAT, held until, last admission
    PRIMARY KEY (function_id, kind, key_hash)
) WITHOUT ROWID;

CREATE INDEX flow_keys_expiry ON flow_keys (function_id, until_at);

ALTER TABLE runs ADD COLUMN singleton_key TEXT;
ALTER TABLE runs ADD COLUMN skipped TEXT;
CREATE INDEX runs_singleton ON runs (singleton_key)
    WHERE singleton_key IS NOT NULL AND status IN ('Queued', 'Running', 'Sleeping', 'Waiting');
