-- Flow control, concurrency (issue 9). A run of a function with concurrency limits records
-- its slots (``slot1``, ``slot2``: gateway/flow/concurrency.py, one per limit), its queue
-- (``cqueue``: the slots together, the unit of fairness) and its key as shown
-- (``conc_key``). Running counts are never stored: they are counted from the leased runs
-- by slot (``runs_slot1``, ``runs_slot2``), so no way a lease ends can leak a slot. A claim
-- walks the function's queues from ``conc_cursors.cursor`` (round-robin across keys) through
-- ``runs_cqueue``.

ALTER TABLE runs ADD COLUMN slot1 TEXT;
ALTER TABLE runs ADD COLUMN slot2 TEXT;
ALTER TABLE runs ADD COLUMN cqueue TEXT COLLATE "C";
ALTER TABLE runs ADD COLUMN conc_key TEXT;
CREATE INDEX runs_cqueue ON runs (function_id, cqueue, available_at)
    WHERE cqueue IS NOT NULL AND status IN ('Queued', 'Sleeping', 'Waiting');
CREATE INDEX runs_slot1 ON runs (slot1) WHERE slot1 IS NOT NULL AND status = 'Running';
CREATE INDEX runs_slot2 ON runs (slot2) WHERE slot2 IS NOT NULL AND status = 'Running';

CREATE TABLE conc_cursors (
    function_id TEXT PRIMARY KEY,
    cursor      TEXT COLLATE "C" NOT NULL              -- the last queue served
);
