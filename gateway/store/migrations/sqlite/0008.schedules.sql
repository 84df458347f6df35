-- Cron schedules (issue 10). ``schedules`` holds each active cron trigger's next due tick,
-- claimed by the gateway whose batch finds it due (one at a time); ``cron_ticks`` holds the
-- ticks that started a run: its primary key lets one (function, tick) start one run, whatever
-- races (restarts, re-registrations, several gateways). Ticks older than a day are pruned.

CREATE TABLE schedules (
    function_id TEXT NOT NULL,
    cron        TEXT NOT NULL,              -- the trigger's expression, as declared
    tz          TEXT NOT NULL,
    next_tick   REAL NOT NULL,              -- epoch seconds
    PRIMARY KEY (function_id, cron, tz)
) WITHOUT ROWID;
CREATE INDEX schedules_due ON schedules (next_tick);

CREATE TABLE cron_ticks (
    function_id TEXT NOT NULL,
    tick        INTEGER NOT NULL,           -- epoch milliseconds
    PRIMARY KEY (function_id, tick)
) WITHOUT ROWID;
