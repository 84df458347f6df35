-- Event keys and API keys made with `python -m gateway keys create`: only their SHA-256 is
-- kept. A revoked key keeps its row (revoked_at set) so `keys list` still shows it.

CREATE TABLE access_keys (
    id         TEXT PRIMARY KEY,            -- shown by `keys list`, given to `keys revoke`
    kind       TEXT NOT NULL,               -- 'event' or 'api'
    name       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,        -- SHA-256 of the key, hex
    hint       TEXT NOT NULL,               -- the key's first characters, to recognise it
    read_only  INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    revoked_at REAL
);
