-- Named queries for the SQLite store. Parameters are positional (?1, ?2...); a list parameter
-- arrives as a JSON array and is read with json_each. What is the same on both
-- backends is in common.sql; every query here has a twin of the same name and meaning in
-- postgres.sql.
--
-- The ready-run lists are written ``(status = 'Queued' OR status = 'Sleeping' OR status =
-- 'Waiting')``, not as IN lists: the partial indexes of ready runs (runs_ready,
-- runs_by_priority, runs_cqueue, runs_cqueue_resumed; migration 0018) are defined so, because
-- SQLite builds a temporary b-tree for an IN list at every write of a run row, and it uses a
-- partial index only for a query holding the identical expression.

-- ============================= events and runs ==============================

-- name: recent_event_ids
-- A join, not ``id IN (SELECT ...)``: no temporary b-tree of the list is built first (an id
-- listed twice comes back twice; the caller makes a set).
SELECT e.id FROM json_each(?1) AS k JOIN events e ON e.id = k.value AND e.received_at > ?2;

-- name: reserve_event_seqs
-- One writer owns a SQLite file, so the next seqs are simply past the largest. The ?1 rows
-- come from json_each over '[0,0,...]' (a zeroblob's hex, each '00' made '0,'): half the CPU
-- of a recursive CTE's rows.
SELECT (SELECT COALESCE(MAX(seq), 0) FROM events) + key + 1
FROM json_each('[' || replace(hex(zeroblob(?1 - 1)), '00', '0,') || '0]') WHERE ?1 > 0;

-- name: lock_event_names
-- One writer owns a SQLite file: matching events and waits is serialized already.
-- (no statement: SQLiteDb runs nothing for an empty query)

-- name: lock_event_name_for_wait
-- One writer owns a SQLite file: nothing to lock (no statement is run).

-- ========================== staged writes (SQLiteDb) ==========================
-- A batch's rows of a write go into a temporary table (``temp.staged_<name>``, columns c1,
-- c2... as the query's parameters ?1, ?2...), then into the table in one statement: one run
-- of the program, which opens each index of the table once, and for events updates
-- sqlite_sequence (AUTOINCREMENT) once, not once a row (gateway/store/sqlite.py, STAGED).
-- Each is the query of the same name without ``_staged``, row for row, in the rows' order.

-- name: insert_event_staged
INSERT INTO events (seq, id, name, payload, received_at, traceparent)
SELECT c1, c2, c3, c4, c5, c6 FROM temp.staged_insert_event ORDER BY rowid;

-- name: insert_run_staged
INSERT INTO runs (id, function_id, status, available_at, event_ids, queued_at, parent_run_id,
                  parent_step_id, deadline_at, slot1, slot2, cqueue, conc_key)
SELECT c1, c2, 'Queued', c3, c4, c5, c6, c7, c8, c9, c10, c11, c12
FROM temp.staged_insert_run ORDER BY rowid;

-- name: insert_leased_run_staged
INSERT INTO runs (id, function_id, status, available_at, event_ids, queued_at, deadline_at,
                  fence, session_id, started_at)
SELECT c1, c2, c3, NULL, c4, c5, c6, 1, c7, c8 FROM temp.staged_insert_leased_run
ORDER BY rowid;

-- name: finish_run_staged
-- Each run once (SQLiteDb stages only then): an UPDATE ... FROM writes a row once.
UPDATE runs SET status = f.c1, output = f.c2, error = f.c3, ended_at = f.c4, session_id = NULL,
    available_at = NULL, deadline_at = NULL, state_bytes = state_bytes + f.c6,
    step_count = step_count + f.c7,
    lease_losses = CASE WHEN f.c8 = 1 THEN 0 ELSE lease_losses END,
    attempt = CASE WHEN f.c6 > 0 THEN 0 ELSE attempt END
FROM temp.staged_finish_run AS f WHERE runs.id = f.c5;

-- =============================== checkpoints ================================

-- name: checkpoint_runs
-- The list holds each run once (a join: no temporary b-tree of the list, as IN would build).
SELECT r.id, r.fence, r.status, r.function_id, r.state_bytes, r.parent_run_id,
    r.parent_step_id, r.step_count
FROM json_each(?1) AS k JOIN runs r ON r.id = k.value;

-- name: insert_step
-- A step the transaction takes for new: PostgreSQL writes it by a plain insert (cheaper than
-- its upsert); here a plain insert costs what the upsert costs, so it stays upsert_step, and
-- a step that was there after all is simply updated.
INSERT INTO steps (run_id, step_id, kind, status, attempts, output, error, wake_at, started_at,
                   ended_at, attempt_started_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9)
ON CONFLICT (run_id, step_id) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, output = excluded.output,
    error = excluded.error, wake_at = excluded.wake_at, ended_at = excluded.ended_at,
    attempt_started_at = excluded.attempt_started_at
WHERE steps.status NOT IN ('Completed', 'Failed');

-- name: log_step_attempt
-- The attempt a step row now holds, logged as PostgreSQL's trigger on steps logs it (an
-- attempt that failed or was retried: a first attempt that completed logs nothing). SQLiteDb
-- runs it after a step write changed the row (migration 0021: no trigger runs for each row).
INSERT INTO step_attempts
SELECT run_id, step_id, attempts, status, attempt_started_at, ended_at, wake_at, error
FROM steps WHERE run_id = ?1 AND step_id = ?2
AND kind = 'run' AND (status <> 'Completed' OR attempts > 1)
ON CONFLICT (run_id, step_id, attempt) DO UPDATE SET
    status = excluded.status, started_at = excluded.started_at,
    ended_at = excluded.ended_at, retry_at = excluded.retry_at, error = excluded.error;

-- =========================== endings and commands ===========================

-- name: run_for_end
SELECT function_id, session_id, fence, parent_run_id, parent_step_id, status
FROM runs WHERE id = ?1;

-- name: due_deadlines
SELECT id, started_at, function_id FROM runs WHERE deadline_at <= ?1;

-- name: session_runs
-- The runs leased now, in runs_by_status, whose entries hold the session (migration 0019: no
-- index of sessions to write at every lease and end besides it).
SELECT id, function_id, lease_losses FROM runs INDEXED BY runs_by_status
WHERE status = 'Running' AND session_id = ?1;

-- name: runs_notes
-- What the worker noticed (warnings), why flow control skipped a run or what holds it back,
-- for a page of runs.
SELECT id, warnings, skipped, hold_option, hold_key FROM runs
WHERE id IN (SELECT value FROM json_each(?1))
AND (warnings IS NOT NULL OR skipped IS NOT NULL OR hold_option IS NOT NULL);

-- name: recover_leases
-- The fence stays and the run is marked resumable: its worker, if it lived, takes it back
-- (resume_lease) before ``available_at`` lets anyone else.
UPDATE runs SET status = ?2, session_id = NULL, available_at = ?1, resumable = 1
WHERE status = 'Running';

-- ================================== leases ==================================

-- name: lease_runs
-- lease_run of every run in ?3 (a JSON list, each run once) for session ?1 at ?2: SQLiteDb
-- runs a batch's leases as one statement per session (one run of the program opens each index
-- of runs once, not once a run).
UPDATE runs SET status = ?4, fence = fence + 1, session_id = ?1,
    started_at = COALESCE(started_at, ?2), resumable = 0, available_at = NULL
WHERE id IN (SELECT value FROM json_each(?3));

-- name: ready_resumed_runs
-- Ready runs of ?1 that were leased before (woken, retried, requeued), in the order they came
-- due: they are leased before any run not yet started (gateway/scheduler/order.py). One seek in
-- runs_ready, whose second key is this CASE, written as there.
SELECT available_at, id, function_id, fence, attempt, started_at FROM runs
WHERE function_id = ?1 AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting')
AND (CASE WHEN started_at IS NULL THEN 1 ELSE 0 END) = 0 AND available_at <= ?2
ORDER BY available_at LIMIT ?3;

-- name: ready_runs
-- Ready runs of ?1 not yet started, in queue order (after ready_resumed_runs).
SELECT available_at, id, function_id, fence, attempt, started_at FROM runs
WHERE function_id = ?1 AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting')
AND (CASE WHEN started_at IS NULL THEN 1 ELSE 0 END) = 1 AND available_at <= ?2
ORDER BY available_at LIMIT ?3;

-- name: next_ready
-- The earliest future time a run of a function becomes ready (one index seek per kind of run
-- in runs_ready: started before, not yet started).
SELECT MIN(due) FROM (
    SELECT (SELECT MIN(available_at) FROM runs WHERE function_id = ?1
            AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting')
            AND (CASE WHEN started_at IS NULL THEN 1 ELSE 0 END) = 0 AND available_at > ?2) AS due
    UNION ALL
    SELECT (SELECT MIN(available_at) FROM runs WHERE function_id = ?1
            AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting')
            AND (CASE WHEN started_at IS NULL THEN 1 ELSE 0 END) = 1 AND available_at > ?2)
) AS kinds;

-- name: settle_due_waits
-- Waits of runs being leased whose timeout passed: the wait goes (its step resolves below).
DELETE FROM waits WHERE (run_id, step_id) IN (
    SELECT run_id, step_id FROM steps
    WHERE run_id IN (SELECT value FROM json_each(?1)) AND status = 'Waiting' AND wake_at <= ?2
);

-- name: settle_due_steps
-- Sleeps that are over complete; waits that timed out get null; invokes that timed out fail.
UPDATE steps SET
    status = CASE status WHEN 'Invoking' THEN 'Failed' ELSE 'Completed' END,
    output = CASE status WHEN 'Invoking' THEN NULL ELSE ?3 END,
    error = CASE status WHEN 'Invoking' THEN ?4 ELSE NULL END,
    ended_at = ?2, wake_at = NULL
WHERE run_id IN (SELECT value FROM json_each(?1))
AND status IN ('Sleeping', 'Waiting', 'Invoking') AND wake_at <= ?2
RETURNING run_id, status;

-- name: steps_of_runs
SELECT run_id, step_id, kind, status, output, error, attempts, wake_at FROM steps
WHERE run_id IN (SELECT value FROM json_each(?1));

-- name: event_payloads_of_runs
SELECT re.run_id, e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
WHERE re.run_id IN (SELECT value FROM json_each(?1))
ORDER BY re.run_id, re.position;

-- ================================== reads ===================================

-- name: runs_steps
-- The steps of a page of runs, in one query (not one per run).
SELECT run_id, step_id, kind, status, attempts, output, error, started_at, ended_at
FROM steps WHERE run_id IN (SELECT value FROM json_each(?1))
ORDER BY run_id, started_at, step_id;

-- name: event_run_ids
SELECT event_seq, run_id FROM run_events WHERE event_seq IN (SELECT value FROM json_each(?1))
ORDER BY run_id;

-- cron ticks and delayed runs

-- name: due_schedules
SELECT function_id, cron, tz, next_tick FROM schedules WHERE next_tick <= ?1
ORDER BY next_tick LIMIT ?2;

-- ========================= flow control: admission ==========================

-- name: sweep_flow_keys
-- Rows whose time has passed decide like absent ones (a TAT or a hold in the past, a
-- singleton lock not taken since): dropped so high-cardinality keys do not pile up.
-- At most ?3 rows a time: the cost stays proportional to what expired.
DELETE FROM flow_keys WHERE (function_id, kind, key_hash) IN (
    SELECT function_id, kind, key_hash FROM flow_keys WHERE function_id = ?1 AND until_at < ?2
    LIMIT ?3);

-- =================== flow control: throttle and priority ====================

-- name: ready_runs_by_priority
-- As ready_runs, in priority order (runs_by_priority): as if queued ``priority`` s earlier,
-- ties by arrival. Every run of a function with a priority has an arrival (migration 0022,
-- fill_arrivals), and the index holds only those.
SELECT available_at, id, function_id, fence, attempt, started_at, available_at - priority
FROM runs INDEXED BY runs_by_priority  -- without statistics SQLite would sort every ready run
WHERE function_id = ?1 AND arrival IS NOT NULL
AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting')
AND available_at <= ?2 AND started_at IS NULL
ORDER BY available_at - priority, arrival LIMIT ?3;

-- ======================== flow control: concurrency =========================

-- name: conc_waiting
-- Runs of a queue not started or not running (for max_queued), counted up to ?3.
SELECT COUNT(*) FROM (SELECT 1 FROM runs WHERE function_id = ?1 AND cqueue = ?2
    AND cqueue IS NOT NULL AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting')
    LIMIT ?3);

-- name: lock_concurrency
-- One writer owns a SQLite file: claims are serialised already.
-- (no statement: SQLiteDb runs nothing for an empty query)

-- name: conc_queues
-- Up to ?4 queues of function ?1 after ?2, in key order, with a run ready at ?3, and how many
-- are ready (counted up to ?5): a skip-scan through runs_cqueue, one seek per queue whatever
-- the backlogs.
WITH RECURSIVE q(k, n) AS (
    SELECT (SELECT MIN(cqueue) FROM runs WHERE function_id = ?1 AND cqueue > ?2
            AND cqueue IS NOT NULL
            AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting')
            AND available_at <= ?3), 1
    UNION ALL
    SELECT (SELECT MIN(cqueue) FROM runs WHERE function_id = ?1 AND cqueue > q.k
            AND cqueue IS NOT NULL
            AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting')
            AND available_at <= ?3), q.n + 1
    FROM q WHERE q.k IS NOT NULL AND q.n < ?4
)
SELECT k, (SELECT COUNT(*) FROM (SELECT 1 FROM runs WHERE function_id = ?1 AND cqueue = q.k
            AND cqueue IS NOT NULL
            AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting')
            AND available_at <= ?3 LIMIT ?5))
FROM q WHERE k IS NOT NULL;

-- name: conc_resumed_heads
-- The first ?4 ready runs leased before (runs_cqueue_resumed) of each queue in ?3 (a JSON
-- list), in the order they came due: they go before the queue's runs not yet started.
SELECT r.available_at, r.id, r.function_id, r.fence, r.attempt, r.started_at, r.cqueue,
       r.available_at - r.priority
FROM json_each(?3) AS k JOIN runs r ON r.id IN (
    SELECT id FROM runs INDEXED BY runs_cqueue_resumed
    WHERE function_id = ?1 AND cqueue = k.value AND cqueue IS NOT NULL
        AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting')
        AND started_at IS NOT NULL
        AND available_at <= ?2
    ORDER BY available_at LIMIT ?4);

-- name: conc_heads
-- The first ?4 ready runs not yet started of each queue in ?3 (a JSON list), in queue order
-- (arrival).
SELECT r.available_at, r.id, r.function_id, r.fence, r.attempt, r.started_at, r.cqueue,
       r.available_at - r.priority
FROM json_each(?3) AS k JOIN runs r ON r.id IN (
    SELECT id FROM runs WHERE function_id = ?1 AND cqueue = k.value AND cqueue IS NOT NULL
        AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting') AND available_at <= ?2
        AND started_at IS NULL
    ORDER BY available_at LIMIT ?4);

-- name: conc_heads_by_priority
-- As conc_heads, in priority order within each queue (ties by arrival).
SELECT r.available_at, r.id, r.function_id, r.fence, r.attempt, r.started_at, r.cqueue,
       r.available_at - r.priority
FROM json_each(?3) AS k JOIN runs r ON r.id IN (
    SELECT id FROM runs WHERE function_id = ?1 AND cqueue = k.value AND cqueue IS NOT NULL
        AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting') AND available_at <= ?2
        AND started_at IS NULL
    ORDER BY available_at - priority, arrival LIMIT ?4);

-- name: run_concurrency
-- A run's queue, its key as shown, and the runs of the queue ready now that go before it:
-- the runs already started go before those not yet started (gateway/scheduler/order.py).
SELECT cqueue, conc_key, (SELECT COUNT(*) FROM runs o WHERE o.function_id = r.function_id
        AND o.cqueue = r.cqueue AND o.cqueue IS NOT NULL
        AND (o.status = 'Queued' OR o.status = 'Sleeping' OR o.status = 'Waiting')
        AND o.available_at <= ?2
        AND CASE WHEN (o.started_at IS NULL) = (r.started_at IS NULL)
            THEN o.available_at < r.available_at
                OR (o.available_at = r.available_at AND o.id < r.id)
            ELSE o.started_at IS NOT NULL END)
FROM runs r WHERE r.id = ?1 AND r.cqueue IS NOT NULL;

-- name: slots_running
-- Leased runs per slot, for the slots in ?1 (a run whose two slots are one counts once).
SELECT slot, COUNT(*) FROM (
    SELECT slot1 AS slot FROM runs WHERE slot1 IN (SELECT value FROM json_each(?1))
        AND slot1 IS NOT NULL AND status = 'Running'
    UNION ALL
    SELECT slot2 FROM runs WHERE slot2 IN (SELECT value FROM json_each(?1))
        AND slot2 IS NOT NULL AND status = 'Running' AND slot2 IS NOT slot1)
GROUP BY slot;

-- ===================== flow control: debounce and batch =====================

-- name: window_run
-- The window's pending run: open while Queued and never leased (fence 0).
SELECT status, fence, event_ids FROM runs WHERE id = ?1;

-- name: sweep_windows
-- Windows past their deadline are closed (their run is due): dropped, at most ?3 at a time.
DELETE FROM flow_windows WHERE (function_id, key_hash) IN (
    SELECT function_id, key_hash FROM flow_windows WHERE function_id = ?1 AND deadline < ?2
    LIMIT ?3);

-- ========================= tracing (OpenTelemetry) ==========================

-- name: trace_parents_of_runs
-- The traceparent of each run's first event: the parent of the run's span (migration 0013).
SELECT re.run_id, e.traceparent FROM run_events re JOIN events e ON e.seq = re.event_seq
WHERE re.run_id IN (SELECT value FROM json_each(?1)) AND re.position = 0;

-- name: list_runs_by_function
-- Through runs_by_function_status (runs_by_function went in migration 0019): the statuses the
-- function's runs have (a skip-scan, one seek each), the newest ?2 ids below ?1 of each (one
-- seek each), merged by id; then the rows of the page.
WITH RECURSIVE s(status) AS (
    SELECT (SELECT MIN(status) FROM runs WHERE function_id = ?3)
    UNION ALL
    SELECT (SELECT MIN(status) FROM runs WHERE function_id = ?3 AND status > s.status)
    FROM s WHERE s.status IS NOT NULL
)
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE id IN (
    SELECT h.id FROM s JOIN runs h ON h.id IN (
        SELECT id FROM runs WHERE function_id = ?3 AND status = s.status AND id < ?1
        ORDER BY id DESC LIMIT ?2)
    ORDER BY h.id DESC LIMIT ?2)
ORDER BY id DESC;

-- A run id is a ULID of its queue time, so a time range is an id range: these scans walk an
-- index by status (or the primary key) newest first and read no run outside the range.

-- ================= dashboard: selections, counts, timeline ==================

-- name: scan_runs_by_function
-- As list_runs_by_function: each status of the function's runs in runs_by_function_status.
WITH RECURSIVE s(status) AS (
    SELECT (SELECT MIN(status) FROM runs WHERE function_id = ?1)
    UNION ALL
    SELECT (SELECT MIN(status) FROM runs WHERE function_id = ?1 AND status > s.status)
    FROM s WHERE s.status IS NOT NULL
)
SELECT r.id, (SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
              WHERE re.run_id = r.id AND re.position = 0)
FROM runs r WHERE r.id IN (
    SELECT h.id FROM s JOIN runs h ON h.id IN (
        SELECT id FROM runs WHERE function_id = ?1 AND status = s.status
        AND id >= ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4)
    ORDER BY h.id DESC LIMIT ?4)
ORDER BY r.id DESC;

-- name: scan_runs_by_status
SELECT r.id, (SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
              WHERE re.run_id = r.id AND re.position = 0)
FROM runs r INDEXED BY runs_by_status
WHERE r.status = ?1 AND r.id >= ?2 AND r.id < ?3
ORDER BY r.id DESC LIMIT ?4;

-- name: scan_runs_by_function_status
SELECT r.id, (SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
              WHERE re.run_id = r.id AND re.position = 0)
FROM runs r INDEXED BY runs_by_function_status
WHERE r.function_id = ?1 AND r.status = ?2 AND r.id >= ?3 AND r.id < ?4
ORDER BY r.id DESC LIMIT ?5;

-- name: runs_by_ids
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id DESC;

-- name: live_counts
-- The Functions page: live runs of every function (few, whatever the store's size) ...
-- (INDEXED BY: with statistics SQLite would rather walk every run in function order.)
SELECT function_id, status, COUNT(*) FROM runs INDEXED BY runs_by_status
WHERE status IN ('Queued', 'Running', 'Sleeping', 'Waiting') GROUP BY function_id, status;

-- name: ended_counts_since
-- ... and the runs that ended among those queued since a time (an id: see scan_runs).
SELECT function_id, status, COUNT(*) FROM runs INDEXED BY runs_by_status
WHERE status IN ('Completed', 'Failed', 'Cancelled', 'Skipped') AND id >= ?1
GROUP BY function_id, status;

-- name: flow_key_counts
-- Per flow-control key holding a function's runs, the queued and running counts, top first.
SELECT hold_option, hold_key, SUM(status = 'Queued') AS queued, SUM(status = 'Running') AS running
FROM runs WHERE function_id = ?1 AND status IN ('Queued', 'Running', 'Sleeping', 'Waiting')
AND hold_key IS NOT NULL
GROUP BY hold_option, hold_key HAVING queued + running > 0
ORDER BY queued + running DESC, hold_key LIMIT ?2;
