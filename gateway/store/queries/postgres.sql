-- Named queries for the PostgreSQL store. Parameters are positional ($1, $2...); a list
-- parameter arrives as an array. What is the same on both backends is in
-- common.sql; every query here has a twin of the same name and meaning in sqlite.sql. Rows a transaction will change are locked as they are read (FOR UPDATE), and
-- claims skip rows another gateway holds (SKIP LOCKED), so no run is leased twice.
--
-- A list of ids is read as ``= ANY(ARRAY(SELECT unnest($1::text[])))``, not ``= ANY($1)``:
-- given the list itself, the planner multiplies its length by the selectivity of one id, and
-- without statistics (a database filling up before autovacuum's ANALYZE, or autovacuum off)
-- that is 0.5% of the table per id: a batch of 500 ids "matched" the whole table, read by a
-- sequential scan (checkpoint_runs: 9 ms a batch at 50,000 runs, growing with the table).
-- Behind ARRAY(SELECT ...) the list's length is unknown and the estimate small: an index
-- search at any size (tests/integration/test_pg_plans.py). The events of a run's links are
-- read per link, by a LATERAL subquery the planner may not flatten (OFFSET 0), for the same
-- reason: joined, it hashed every event.

-- ============================= events and runs ==============================

-- name: recent_event_ids
SELECT id FROM events WHERE id = ANY(ARRAY(SELECT unnest($1::text[]))) AND received_at > $2;

-- name: reserve_event_seqs
SELECT nextval('events_seq_seq') FROM generate_series(1, $1::int);

-- name: lock_event_names
-- Ingesting events of these names: share the name's lock, so that a wait being stored for
-- one of them (which takes it exclusively) sees these events or is seen by them.
SELECT pg_advisory_xact_lock_shared(hashtext(n)) FROM unnest($1::text[]) AS n ORDER BY n;

-- name: lock_event_name_for_wait
SELECT pg_advisory_xact_lock(hashtext($1));

-- =============================== checkpoints ================================

-- name: checkpoint_runs
SELECT id, fence, status, function_id, state_bytes, parent_run_id, parent_step_id,
    step_count FROM runs
WHERE id = ANY(ARRAY(SELECT unnest($1::text[]))) ORDER BY id FOR UPDATE;

-- name: insert_step
-- upsert_step of a step the transaction takes for new (its first attempt, not written before
-- in the batch): a plain insert, without ON CONFLICT's speculative insertion (a probe of
-- steps_pkey, the insert, its confirmation): 2-3 µs of backend CPU a step fewer. A row that
-- is there after all (a checkpoint resent after a reconnect) fails the insert, and the batch
-- is applied again with every step upserted (PgDb, PostgresStore._transaction).
INSERT INTO steps (run_id, step_id, kind, status, attempts, output, error, wake_at, started_at,
                   ended_at, attempt_started_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9);

-- =========================== endings and commands ===========================

-- name: run_for_end
SELECT function_id, session_id, fence, parent_run_id, parent_step_id, status
FROM runs WHERE id = $1 FOR UPDATE;

-- name: due_deadlines
SELECT id, started_at, function_id FROM runs WHERE deadline_at <= $1 FOR UPDATE SKIP LOCKED;

-- name: session_runs
SELECT id, function_id, lease_losses FROM runs WHERE session_id = $1 AND status = 'Running'
FOR UPDATE;

-- name: runs_notes
-- What the worker noticed (warnings), why flow control skipped a run or what holds it back,
-- for a page of runs.
SELECT id, warnings, skipped, hold_option, hold_key FROM runs
WHERE id = ANY(ARRAY(SELECT unnest($1::text[])))
AND (warnings IS NOT NULL OR skipped IS NOT NULL OR hold_option IS NOT NULL);

-- ================================== leases ==================================

-- name: ready_resumed_runs
-- Ready runs of $1 that were leased before (woken, retried, requeued), in the order they came
-- due: they are leased before any run not yet started (gateway/scheduler/order.py). One seek in
-- runs_ready, whose second key is this CASE, written as there.
SELECT available_at, id, function_id, fence, attempt, started_at FROM runs
WHERE function_id = $1 AND status IN ('Queued', 'Sleeping', 'Waiting')
AND (CASE WHEN started_at IS NULL THEN 1 ELSE 0 END) = 0 AND available_at <= $2
ORDER BY available_at LIMIT $3 FOR UPDATE SKIP LOCKED;

-- name: ready_runs
-- Ready runs of $1 not yet started, in queue order (after ready_resumed_runs).
SELECT available_at, id, function_id, fence, attempt, started_at FROM runs
WHERE function_id = $1 AND status IN ('Queued', 'Sleeping', 'Waiting')
AND (CASE WHEN started_at IS NULL THEN 1 ELSE 0 END) = 1 AND available_at <= $2
ORDER BY available_at LIMIT $3 FOR UPDATE SKIP LOCKED;

-- name: next_ready
-- The earliest future time a run of a function becomes ready (one index seek per kind of run
-- in runs_ready: started before, not yet started).
SELECT MIN(due) FROM (
    SELECT (SELECT MIN(available_at) FROM runs WHERE function_id = $1
            AND status IN ('Queued', 'Sleeping', 'Waiting')
            AND (CASE WHEN started_at IS NULL THEN 1 ELSE 0 END) = 0 AND available_at > $2) AS due
    UNION ALL
    SELECT (SELECT MIN(available_at) FROM runs WHERE function_id = $1
            AND status IN ('Queued', 'Sleeping', 'Waiting')
            AND (CASE WHEN started_at IS NULL THEN 1 ELSE 0 END) = 1 AND available_at > $2)
) AS kinds;

-- name: settle_due_waits
-- Waits of runs being leased whose timeout passed: the wait goes (its step resolves below).
DELETE FROM waits WHERE (run_id, step_id) IN (
    SELECT run_id, step_id FROM steps
    WHERE run_id = ANY(ARRAY(SELECT unnest($1::text[]))) AND status = 'Waiting'
    AND wake_at <= $2
);

-- name: settle_due_steps
-- Sleeps that are over complete; waits that timed out get null; invokes that timed out fail.
UPDATE steps SET
    status = CASE status WHEN 'Invoking' THEN 'Failed' ELSE 'Completed' END,
    output = CASE status WHEN 'Invoking' THEN NULL ELSE $3::bytea END,
    error = CASE status WHEN 'Invoking' THEN $4::text ELSE NULL END,
    ended_at = $2, wake_at = NULL
WHERE run_id = ANY(ARRAY(SELECT unnest($1::text[])))
AND status IN ('Sleeping', 'Waiting', 'Invoking') AND wake_at <= $2
RETURNING run_id, status;

-- name: steps_of_runs
SELECT run_id, step_id, kind, status, output, error, attempts, wake_at FROM steps
WHERE run_id = ANY(ARRAY(SELECT unnest($1::text[])));

-- name: event_payloads_of_runs
SELECT re.run_id, e.payload FROM run_events re
CROSS JOIN LATERAL (SELECT payload FROM events WHERE seq = re.event_seq OFFSET 0) e
WHERE re.run_id = ANY(ARRAY(SELECT unnest($1::text[])))
ORDER BY re.run_id, re.position;

-- ================================== reads ===================================

-- name: runs_steps
-- The steps of a page of runs, in one query (not one per run).
SELECT run_id, step_id, kind, status, attempts, output, error, started_at, ended_at
FROM steps WHERE run_id = ANY(ARRAY(SELECT unnest($1::text[])))
ORDER BY run_id, started_at, step_id;

-- ========================= flow control: admission ==========================

-- name: sweep_flow_keys
-- Rows whose time has passed decide like absent ones (a TAT or a hold in the past, a
-- singleton lock not taken since): dropped so high-cardinality keys do not pile up.
-- At most $3 rows a time, and none another transaction holds (it never waits).
DELETE FROM flow_keys WHERE (function_id, kind, key_hash) IN (
    SELECT function_id, kind, key_hash FROM flow_keys WHERE function_id = $1 AND until_at < $2
    LIMIT $3 FOR UPDATE SKIP LOCKED);

-- =================== flow control: throttle and priority ====================

-- name: ready_runs_by_priority
-- As ready_runs, in priority order (runs_by_priority): as if queued ``priority`` s earlier,
-- ties by arrival.
SELECT available_at, id, function_id, fence, attempt, started_at, available_at - priority
FROM runs
WHERE function_id = $1 AND status IN ('Queued', 'Sleeping', 'Waiting') AND available_at <= $2
AND started_at IS NULL
ORDER BY available_at - priority, arrival LIMIT $3 FOR UPDATE SKIP LOCKED;

-- ======================== flow control: concurrency =========================

-- name: conc_waiting
SELECT COUNT(*) FROM (SELECT 1 FROM runs WHERE function_id = $1 AND cqueue = $2
    AND cqueue IS NOT NULL AND status IN ('Queued', 'Sleeping', 'Waiting') LIMIT $3) w;

-- name: lock_concurrency
-- Claims of the functions (and apps, for app-scoped limits) named in $1 wait for each other
-- across gateways until commit, in one order (no deadlock): a slot's count and the leases
-- that fill it are then one decision.
SELECT pg_advisory_xact_lock(hashtextextended(o, 9)) FROM (
    SELECT unnest($1::text[]) AS o ORDER BY 1) owners;

-- name: conc_queues
WITH RECURSIVE q(k, n) AS (
    SELECT (SELECT MIN(cqueue) FROM runs WHERE function_id = $1 AND cqueue > $2
            AND cqueue IS NOT NULL AND status IN ('Queued', 'Sleeping', 'Waiting')
            AND available_at <= $3), 1
    UNION ALL
    SELECT (SELECT MIN(cqueue) FROM runs WHERE function_id = $1 AND cqueue > q.k
            AND cqueue IS NOT NULL AND status IN ('Queued', 'Sleeping', 'Waiting')
            AND available_at <= $3), q.n + 1
    FROM q WHERE q.k IS NOT NULL AND q.n < $4
)
SELECT k, (SELECT COUNT(*) FROM (SELECT 1 FROM runs WHERE function_id = $1 AND cqueue = q.k
            AND cqueue IS NOT NULL AND status IN ('Queued', 'Sleeping', 'Waiting')
            AND available_at <= $3 LIMIT $5) c)
FROM q WHERE k IS NOT NULL;

-- name: conc_resumed_heads
SELECT r.available_at, r.id, r.function_id, r.fence, r.attempt, r.started_at, r.cqueue,
       r.available_at - r.priority
FROM runs r WHERE r.id IN (
    SELECT h.id FROM unnest($3::text[]) AS k(q) CROSS JOIN LATERAL (
        SELECT id FROM runs WHERE function_id = $1 AND cqueue = k.q AND cqueue IS NOT NULL
            AND status IN ('Queued', 'Sleeping', 'Waiting') AND started_at IS NOT NULL
            AND available_at <= $2
        ORDER BY available_at LIMIT $4) h)
FOR UPDATE OF r SKIP LOCKED;

-- name: conc_heads
SELECT r.available_at, r.id, r.function_id, r.fence, r.attempt, r.started_at, r.cqueue,
       r.available_at - r.priority
FROM runs r WHERE r.id IN (
    SELECT h.id FROM unnest($3::text[]) AS k(q) CROSS JOIN LATERAL (
        SELECT id FROM runs WHERE function_id = $1 AND cqueue = k.q AND cqueue IS NOT NULL
            AND status IN ('Queued', 'Sleeping', 'Waiting') AND available_at <= $2
            AND started_at IS NULL
        ORDER BY available_at LIMIT $4) h)
FOR UPDATE OF r SKIP LOCKED;

-- name: conc_heads_by_priority
SELECT r.available_at, r.id, r.function_id, r.fence, r.attempt, r.started_at, r.cqueue,
       r.available_at - r.priority
FROM runs r WHERE r.id IN (
    SELECT h.id FROM unnest($3::text[]) AS k(q) CROSS JOIN LATERAL (
        SELECT id FROM runs WHERE function_id = $1 AND cqueue = k.q AND cqueue IS NOT NULL
            AND status IN ('Queued', 'Sleeping', 'Waiting') AND available_at <= $2
            AND started_at IS NULL
        ORDER BY available_at - priority, arrival LIMIT $4) h)
FOR UPDATE OF r SKIP LOCKED;

-- name: run_concurrency
-- A run's queue, its key as shown, and the runs of the queue ready now that go before it:
-- the runs already started go before those not yet started (gateway/scheduler/order.py).
SELECT cqueue, conc_key, (SELECT COUNT(*) FROM runs o WHERE o.function_id = r.function_id
        AND o.cqueue = r.cqueue AND o.cqueue IS NOT NULL
        AND o.status IN ('Queued', 'Sleeping', 'Waiting') AND o.available_at <= $2
        AND CASE WHEN (o.started_at IS NULL) = (r.started_at IS NULL)
            THEN o.available_at < r.available_at
                OR (o.available_at = r.available_at AND o.id < r.id)
            ELSE o.started_at IS NOT NULL END)
FROM runs r WHERE r.id = $1 AND r.cqueue IS NOT NULL;

-- name: slots_running
SELECT slot, COUNT(*) FROM (
    SELECT slot1 AS slot FROM runs WHERE slot1 = ANY($1::text[])
        AND slot1 IS NOT NULL AND status = 'Running'
    UNION ALL
    SELECT slot2 FROM runs WHERE slot2 = ANY($1::text[])
        AND slot2 IS NOT NULL AND status = 'Running' AND slot2 IS DISTINCT FROM slot1) s
GROUP BY slot;

-- ===================== flow control: debounce and batch =====================

-- name: window_run
-- The window's pending run, locked: a claim that took it first has committed by the time this
-- answers (and it is then no longer Queued at fence 0: the window is closed).
SELECT status, fence, event_ids FROM runs WHERE id = $1 FOR UPDATE;

-- name: sweep_windows
-- Windows past their deadline are closed (their run is due): dropped, at most $3 at a time,
-- none another transaction holds (it never waits).
DELETE FROM flow_windows WHERE (function_id, key_hash) IN (
    SELECT function_id, key_hash FROM flow_windows WHERE function_id = $1 AND deadline < $2
    LIMIT $3 FOR UPDATE SKIP LOCKED);

-- ========================= tracing (OpenTelemetry) ==========================

-- name: trace_parents_of_runs
-- The traceparent of each run's first event: the parent of the run's span (migration 0013).
SELECT re.run_id, e.traceparent FROM run_events re
CROSS JOIN LATERAL (SELECT traceparent FROM events WHERE seq = re.event_seq OFFSET 0) e
WHERE re.run_id = ANY(ARRAY(SELECT unnest($1::text[]))) AND re.position = 0;

-- A run id is a ULID of its queue time, so a time range is an id range: these scans walk
-- runs_by_function_status, runs_by_status (or the primary key) newest first and read no run
-- outside the range.
--
-- There is no runs_by_function (migration 0019): every lease and every end changes a run's
-- status, so each of those updates wrote an entry in every index of runs, about 5 µs of
-- backend CPU per run for that one. A function's runs are read from runs_by_function_status,
-- one seek per status its runs have (the statuses found by a loose scan, ``st``: no list to
-- keep in step with gateway.runs, and at most one seek per status), newest first, merged by id.
-- (runs_by_status stays: reading a status from runs_by_function_status would take a seek per
-- function, 150-350 ms a page with 10,000 functions.)

-- name: list_runs_by_function
WITH RECURSIVE st(s) AS (
    SELECT MIN(status) FROM runs WHERE function_id = $3
    UNION ALL
    SELECT (SELECT MIN(status) FROM runs WHERE function_id = $3 AND status > st.s)
    FROM st WHERE st.s IS NOT NULL)
SELECT r.id, r.function_id, r.status, r.fence, r.attempt, r.event_ids, r.output, r.error,
       r.queued_at, r.started_at, r.ended_at, r.available_at, r.parent_run_id
FROM st CROSS JOIN LATERAL (
    SELECT * FROM runs WHERE function_id = $3 AND status = st.s AND id < $1
    ORDER BY id DESC LIMIT $2) r
ORDER BY r.id DESC LIMIT $2;

-- ================= dashboard: selections, counts, timeline ==================

-- name: scan_runs_by_function
WITH RECURSIVE st(s) AS (
    SELECT MIN(status) FROM runs WHERE function_id = $1
    UNION ALL
    SELECT (SELECT MIN(status) FROM runs WHERE function_id = $1 AND status > st.s)
    FROM st WHERE st.s IS NOT NULL)
SELECT r.id, (SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
              WHERE re.run_id = r.id AND re.position = 0)
FROM st CROSS JOIN LATERAL (
    SELECT id FROM runs WHERE function_id = $1 AND status = st.s AND id >= $2 AND id < $3
    ORDER BY id DESC LIMIT $4) r
ORDER BY r.id DESC LIMIT $4;

-- name: scan_runs_by_status
SELECT r.id, (SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
              WHERE re.run_id = r.id AND re.position = 0)
FROM runs r
WHERE r.status = $1 AND r.id >= $2 AND r.id < $3
ORDER BY r.id DESC LIMIT $4;

-- name: scan_runs_by_function_status
SELECT r.id, (SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
              WHERE re.run_id = r.id AND re.position = 0)
FROM runs r
WHERE r.function_id = $1 AND r.status = $2 AND r.id >= $3 AND r.id < $4
ORDER BY r.id DESC LIMIT $5;

-- name: runs_by_ids
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE id = ANY(ARRAY(SELECT unnest($1::text[]))) ORDER BY id DESC;

-- name: live_counts
-- The Functions page: live runs of every function (few, whatever the store's size) ...
SELECT function_id, status, COUNT(*) FROM runs
WHERE status IN ('Queued', 'Running', 'Sleeping', 'Waiting') GROUP BY function_id, status;

-- name: ended_counts_since
-- ... and the runs that ended among those queued since a time (an id: see scan_runs).
SELECT function_id, status, COUNT(*) FROM runs
WHERE status IN ('Completed', 'Failed', 'Cancelled', 'Skipped') AND id >= $1
GROUP BY function_id, status;

-- name: flow_key_counts
-- Per flow-control key holding a function's runs, the queued and running counts, top first.
SELECT hold_option, hold_key, COUNT(*) FILTER (WHERE status = 'Queued'),
       COUNT(*) FILTER (WHERE status = 'Running')
FROM runs WHERE function_id = $1 AND status IN ('Queued', 'Running', 'Sleeping', 'Waiting')
AND hold_key IS NOT NULL
GROUP BY hold_option, hold_key
HAVING COUNT(*) FILTER (WHERE status = 'Queued' OR status = 'Running') > 0
ORDER BY COUNT(*) FILTER (WHERE status = 'Queued' OR status = 'Running') DESC, hold_key
LIMIT $2;

-- ======================== gateways (PostgreSQL only) ========================

-- name: gateway_beat
INSERT INTO gateways (id, started_at, heartbeat_at) VALUES ($1, $2, $2)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at;

-- name: gateway_workers
UPDATE gateways SET workers = $2 WHERE id = $1;

-- name: peer_workers
SELECT id, heartbeat_at, workers FROM gateways
WHERE id <> $1 AND heartbeat_at >= $2 AND workers IS NOT NULL;

-- name: dead_gateways
SELECT id FROM gateways WHERE heartbeat_at < $1 AND id <> $2 FOR UPDATE SKIP LOCKED;

-- name: gateway_runs
-- Runs leased by the sessions of one gateway: session ids are "{gateway id}.{session}".
SELECT id, function_id, lease_losses FROM runs
WHERE session_id >= $1 AND session_id < $2 AND status = 'Running' FOR UPDATE;

-- name: delete_gateway
DELETE FROM gateways WHERE id = $1;

-- name: notify
SELECT pg_notify('tether', $1);

-- --- access keys (gateway/store/keys.py) ---------------------------------------------------

-- name: event_run_ids
SELECT event_seq, run_id FROM run_events
WHERE event_seq = ANY(ARRAY(SELECT unnest($1::bigint[])))
ORDER BY run_id;

-- cron ticks and delayed runs

-- name: due_schedules
-- Claimed by one gateway: another skips the rows this one holds until it commits.
SELECT function_id, cron, tz, next_tick FROM schedules WHERE next_tick <= $1
ORDER BY next_tick LIMIT $2 FOR UPDATE SKIP LOCKED;

-- ================= bulk writes (PostgreSQL only: PgDb.executemany) =================
-- The transaction's executemany() of a hot write runs here as one statement for the whole
-- batch, instead of one execution per row: the server plans and runs it once. The rows come
-- as one JSON array of arrays ($1: each row without its bytea columns, in order: r->>0,
-- r->>1, ...), and each bytea column as an array beside it ($2), read in step with the rows
-- (ROWS FROM). JSON because asyncpg encodes an array parameter element by element at about
-- twice the client CPU of executemany, while orjson writes the rows at less than half of it;
-- floats go through jsonb's numeric unchanged (the shortest text that reads back the same
-- double). Each is the twin of the query named in its comment, and applies to distinct rows
-- only (PgDb runs the rows one by one, in order, when a key repeats).
-- The updates of runs also bound ``runs.id`` by the ids of their rows (``= ANY(ARRAY(...))``):
-- joined only to the JSON rows, whose count the planner guesses, PostgreSQL hashed them and
-- read all of runs (a sequential scan per batch until the table held somewhere between 20,000
-- and 200,000 runs: finish_run's backend CPU per run grew from 14 to 34 µs over the first
-- 20,000); the bound makes it an index search of runs_pkey at any size.

-- name: bulk_insert_event
-- insert_event
INSERT INTO events (seq, id, name, payload, received_at, traceparent)
SELECT (r->>0)::bigint, r->>1, r->>2, b, (r->>3)::float8, r->>4
FROM ROWS FROM (jsonb_array_elements($1::jsonb), unnest($2::bytea[])) AS t(r, b);

-- name: bulk_insert_run
-- insert_run
INSERT INTO runs (id, function_id, status, available_at, event_ids, queued_at, parent_run_id,
                  parent_step_id, deadline_at, slot1, slot2, cqueue, conc_key)
SELECT r->>0, r->>1, 'Queued', (r->>2)::float8, r->>3, (r->>4)::float8, r->>5, r->>6,
       (r->>7)::float8, r->>8, r->>9, r->>10, r->>11
FROM jsonb_array_elements($1::jsonb) AS t(r);

-- name: bulk_insert_leased_run
-- insert_leased_run
INSERT INTO runs (id, function_id, status, available_at, event_ids, queued_at, deadline_at,
                  fence, session_id, started_at)
SELECT r->>0, r->>1, r->>2, NULL, r->>3, (r->>4)::float8, (r->>5)::float8, 1, r->>6,
       (r->>7)::float8
FROM jsonb_array_elements($1::jsonb) AS t(r);

-- name: bulk_insert_run_event
-- insert_run_event
INSERT INTO run_events (run_id, position, event_seq)
SELECT r->>0, (r->>1)::int, (r->>2)::bigint FROM jsonb_array_elements($1::jsonb) AS t(r);

-- name: bulk_upsert_step
-- upsert_step
INSERT INTO steps (run_id, step_id, kind, status, attempts, output, error, wake_at, started_at,
                   ended_at, attempt_started_at)
SELECT r->>0, r->>1, r->>2, r->>3, (r->>4)::int, b, r->>5, (r->>6)::float8, (r->>7)::float8,
       (r->>8)::float8, (r->>7)::float8
FROM ROWS FROM (jsonb_array_elements($1::jsonb), unnest($2::bytea[])) AS t(r, b)
ON CONFLICT (run_id, step_id) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, output = excluded.output,
    error = excluded.error, wake_at = excluded.wake_at, ended_at = excluded.ended_at,
    attempt_started_at = excluded.attempt_started_at
WHERE steps.status NOT IN ('Completed', 'Failed');

-- name: bulk_insert_step
-- insert_step
INSERT INTO steps (run_id, step_id, kind, status, attempts, output, error, wake_at, started_at,
                   ended_at, attempt_started_at)
SELECT r->>0, r->>1, r->>2, r->>3, (r->>4)::int, b, r->>5, (r->>6)::float8, (r->>7)::float8,
       (r->>8)::float8, (r->>7)::float8
FROM ROWS FROM (jsonb_array_elements($1::jsonb), unnest($2::bytea[])) AS t(r, b);

-- name: bulk_run_progressed
-- run_progressed
UPDATE runs SET state_bytes = state_bytes + (r->>0)::bigint,
    step_count = step_count + (r->>2)::int, lease_losses = 0,
    attempt = CASE WHEN (r->>0)::bigint > 0 THEN 0 ELSE attempt END
FROM jsonb_array_elements($1::jsonb) AS t(r)
WHERE runs.id = r->>1
    AND runs.id = ANY(ARRAY(SELECT i->>1 FROM jsonb_array_elements($1::jsonb) AS ids(i)));

-- name: bulk_add_steps
-- add_steps
UPDATE runs SET step_count = step_count + (r->>0)::int
FROM jsonb_array_elements($1::jsonb) AS t(r) WHERE runs.id = r->>1
    AND runs.id = ANY(ARRAY(SELECT i->>1 FROM jsonb_array_elements($1::jsonb) AS ids(i)));

-- name: bulk_finish_run
-- finish_run
UPDATE runs SET status = r->>0, output = b, error = r->>1, ended_at = (r->>2)::float8,
    session_id = NULL, available_at = NULL, deadline_at = NULL,
    state_bytes = state_bytes + (r->>4)::bigint, step_count = step_count + (r->>5)::int,
    lease_losses = CASE WHEN (r->>6)::int = 1 THEN 0 ELSE lease_losses END,
    attempt = CASE WHEN (r->>4)::bigint > 0 THEN 0 ELSE attempt END
FROM ROWS FROM (jsonb_array_elements($1::jsonb), unnest($2::bytea[])) AS t(r, b)
WHERE runs.id = r->>3
    AND runs.id = ANY(ARRAY(SELECT i->>3 FROM jsonb_array_elements($1::jsonb) AS ids(i)));

-- name: bulk_delete_waits
-- delete_waits
DELETE FROM waits WHERE run_id IN (SELECT r->>0 FROM jsonb_array_elements($1::jsonb) AS t(r));

-- name: bulk_lease_run
-- lease_run
UPDATE runs SET status = r->>3, fence = fence + 1, session_id = r->>0,
    started_at = COALESCE(started_at, (r->>1)::float8), resumable = 0, available_at = NULL
FROM jsonb_array_elements($1::jsonb) AS t(r)
WHERE runs.id = r->>2
    AND runs.id = ANY(ARRAY(SELECT i->>2 FROM jsonb_array_elements($1::jsonb) AS ids(i)));
