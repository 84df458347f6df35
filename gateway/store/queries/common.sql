-- Named queries both stores run as written: parameters are positional ($1, $2...; the SQLite
-- store reads them as ?1, ?2...). What truly differs between the backends (list parameters,
-- locks, sequences, upserts with RETURNING on a conflict, JSON) is in sqlite.sql and
-- postgres.sql, under the same names; a name is here or in both of those, never both places
-- (tests/unit/test_queries.py checks, and that no query there is the other's twin).

-- ============================= events and runs ==============================

-- name: insert_event
INSERT INTO events (seq, id, name, payload, received_at, traceparent)
VALUES ($1, $2, $3, $4, $5, $6);

-- name: insert_run
-- slot1, slot2, cqueue, conc_key: its concurrency slots, queue and key (NULL without limits).
INSERT INTO runs (id, function_id, status, available_at, event_ids, queued_at, parent_run_id,
                  parent_step_id, deadline_at, slot1, slot2, cqueue, conc_key)
VALUES ($1, $2, 'Queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12);

-- name: insert_leased_run
-- insert_run of a run its own batch leases (gateway/store/transaction.py, _unclaimed): the
-- row insert_run then lease_run would leave (fence 1, started, no available_at), written
-- once: no second version of the row, nor its index entries. Such a run has no parent, no
-- concurrency slots and no flow-control columns.
INSERT INTO runs (id, function_id, status, available_at, event_ids, queued_at, deadline_at,
                  fence, session_id, started_at)
VALUES ($1, $2, $3, NULL, $4, $5, $6, 1, $7, $8);

-- name: insert_run_event
INSERT INTO run_events (run_id, position, event_seq) VALUES ($1, $2, $3);

-- name: run_for_replay
SELECT function_id FROM runs WHERE id = $1;

-- name: run_event_rows
SELECT e.seq, e.id, e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
WHERE re.run_id = $1 ORDER BY re.position;

-- name: run_trigger
SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
WHERE re.run_id = $1 AND re.position = 0;

-- name: run_trigger_and_seq
-- The run's trigger (``event`` in if_) and the highest seq of its events: a wait of the run
-- matches only events stored after that.
SELECT e.payload, (SELECT MAX(event_seq) FROM run_events WHERE run_id = $1)
FROM run_events re JOIN events e ON e.seq = re.event_seq
WHERE re.run_id = $1 AND re.position = 0;

-- name: events_since
-- A wait's look-back: events of the name received since the gateway last heard from the run,
-- never the run's own events nor older ones (seq above the run's highest).
SELECT payload FROM events WHERE name = $1 AND received_at >= $2 AND seq > $3
ORDER BY seq;

-- =============================== checkpoints ================================

-- name: upsert_step
-- started_at stays the first attempt's; attempt_started_at is this one's (step_attempts).
INSERT INTO steps (run_id, step_id, kind, status, attempts, output, error, wake_at, started_at,
                   ended_at, attempt_started_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9)
ON CONFLICT (run_id, step_id) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, output = excluded.output,
    error = excluded.error, wake_at = excluded.wake_at, ended_at = excluded.ended_at,
    attempt_started_at = excluded.attempt_started_at
WHERE steps.status NOT IN ('Completed', 'Failed');

-- name: insert_pending_step
INSERT INTO steps (run_id, step_id, kind, status, attempts, wake_at, started_at, child_run_id)
VALUES ($1, $2, $3, $4, 1, $5, $6, $7)
ON CONFLICT (run_id, step_id) DO NOTHING;

-- name: insert_done_step
INSERT INTO steps (run_id, step_id, kind, status, attempts, output, started_at, ended_at)
VALUES ($1, $2, $3, 'Completed', 1, $4, $5, $5)
ON CONFLICT (run_id, step_id) DO NOTHING;

-- name: resolve_step
UPDATE steps SET status = $1, output = $2, error = $3, ended_at = $4, wake_at = NULL
WHERE run_id = $5 AND step_id = $6 AND status IN ('Sleeping', 'Waiting', 'Invoking');

-- name: set_step_child
UPDATE steps SET child_run_id = $1 WHERE run_id = $2 AND step_id = $3;

-- name: run_progressed
-- A completed step (it recorded a result, so $1 > 0) also gives the function body a fresh
-- retry budget, as Inngest does.
UPDATE runs SET state_bytes = state_bytes + $1, step_count = step_count + $3,
    lease_losses = 0, attempt = CASE WHEN $1 > 0 THEN 0 ELSE attempt END
WHERE id = $2;

-- name: reset_attempt
-- A step completed without its result passing through run_progressed (send_event,
-- a wait's event, a child's output, a sleep or wait timeout settled at a lease).
UPDATE runs SET attempt = 0 WHERE id = $1;

-- name: add_steps
UPDATE runs SET step_count = step_count + $1 WHERE id = $2;

-- name: recount_steps
UPDATE runs SET step_count = (SELECT count(*) FROM steps WHERE steps.run_id = runs.id)
WHERE id = $1
RETURNING step_count;

-- name: step_exists
SELECT 1 FROM steps WHERE run_id = $1 AND step_id = $2;

-- name: requeue_run
UPDATE runs SET status = $5, session_id = NULL, available_at = $1,
    attempt = COALESCE($2, attempt), error = COALESCE($3, error)
WHERE id = $4;

-- name: pending_steps
SELECT status, MIN(wake_at) FROM steps
WHERE run_id = $1 AND status IN ('Retrying', 'Sleeping', 'Waiting', 'Invoking')
GROUP BY status;

-- name: suspend_run
UPDATE runs SET status = $1, available_at = $2, session_id = NULL
WHERE id = $3 AND status NOT IN ('Completed', 'Failed', 'Cancelled', 'Skipped')
RETURNING function_id;

-- =========================== endings and commands ===========================

-- name: end_run
UPDATE runs SET status = $1, output = $2, error = $3, ended_at = $4, session_id = NULL,
    available_at = NULL, deadline_at = NULL
WHERE id = $5;

-- name: finish_run
-- end_run of a run that returned or failed, with its progress of the same batch folded in
-- (what run_progressed and add_steps would have written: one write of the row, not two):
-- $6 bytes of step results recorded, $7 steps counted, $8 = 1 if a step was recorded.
UPDATE runs SET status = $1, output = $2, error = $3, ended_at = $4, session_id = NULL,
    available_at = NULL, deadline_at = NULL, state_bytes = state_bytes + $6,
    step_count = step_count + $7,
    lease_losses = CASE WHEN $8 = 1 THEN 0 ELSE lease_losses END,
    attempt = CASE WHEN $6 > 0 THEN 0 ELSE attempt END
WHERE id = $5;

-- name: live_children
SELECT id FROM runs WHERE parent_run_id = $1
AND status NOT IN ('Completed', 'Failed', 'Cancelled', 'Skipped');

-- name: set_lease_losses
UPDATE runs SET lease_losses = $1 WHERE id = $2;

-- name: set_run_warnings
UPDATE runs SET warnings = $1 WHERE id = $2;

-- name: forgive_lease_loss
UPDATE runs SET lease_losses = lease_losses - 1 WHERE id = $1 AND lease_losses > 0;

-- name: release_run
-- A revoked lease: bump the fence now, so its holder's late checkpoints are refused.
UPDATE runs SET status = $4, session_id = NULL, available_at = $1, lease_losses = $2,
    fence = fence + 1
WHERE id = $3;

-- name: return_lease
UPDATE runs SET status = $4, session_id = NULL, available_at = $1, fence = fence + 1
WHERE id = $2 AND fence = $3 AND status = 'Running' RETURNING function_id;

-- ================================== waits ===================================

-- name: insert_wait
INSERT INTO waits (run_id, step_id, kind, event_name, if_, match_path, match_key, trigger,
                   expires_at, created_at, after_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (run_id, step_id) DO NOTHING;

-- name: has_waits
SELECT 1 FROM waits WHERE event_name = $1 LIMIT 1;

-- name: wait_paths
-- The distinct paths waits on an event name are indexed by: a skip-scan, one index seek per
-- path, so 10,000 waits on one name and path cost one seek, not a scan.
WITH RECURSIVE p(path) AS (
    SELECT MIN(match_path) FROM waits WHERE event_name = $1
    UNION ALL
    SELECT (SELECT MIN(match_path) FROM waits WHERE event_name = $1 AND match_path > p.path)
    FROM p WHERE p.path IS NOT NULL
)
SELECT path FROM p WHERE path IS NOT NULL;

-- name: waits_for
-- The waits an event (seq $4) may match: only those of runs created before it was stored.
SELECT run_id, step_id, kind, if_, trigger, expires_at FROM waits
WHERE event_name = $1 AND match_path = $2 AND match_key = $3 AND after_seq < $4
ORDER BY created_at;

-- name: delete_wait
DELETE FROM waits WHERE run_id = $1 AND step_id = $2;

-- name: end_pending_steps
-- A run ended: its sleeps, waits, invokes and retries still pending never will resolve.
UPDATE steps SET status = 'Cancelled', ended_at = $1, wake_at = NULL
WHERE run_id = $2 AND status IN ('Retrying', 'Sleeping', 'Waiting', 'Invoking');

-- name: delete_waits
DELETE FROM waits WHERE run_id = $1;

-- name: wake_run
UPDATE runs SET status = $3, available_at = $1
WHERE id = $2 AND status IN ('Queued', 'Sleeping', 'Waiting') RETURNING function_id;

-- ================================== leases ==================================

-- name: lease_run
-- available_at is cleared (set again by whatever makes the run ready again): the partial
-- indexes of ready runs then skip a leased run without evaluating their status list (0016).
UPDATE runs SET status = $4, fence = fence + 1, session_id = $1,
    started_at = COALESCE(started_at, $2), resumable = 0, available_at = NULL
WHERE id = $3;

-- name: resume_lease
-- A reconnecting worker's lease ($2 at fence $3), given to its new session $1 if nobody was
-- leased the run since: requeued by a restart (resumable), or still leased to a session of
-- the worker's that is gone. available_at is cleared as by lease_run.
UPDATE runs SET status = $4, session_id = $1, resumable = 0, available_at = NULL
WHERE id = $2 AND fence = $3 AND (
    (status = 'Queued' AND resumable = 1 AND session_id IS NULL)
    OR (status = 'Running' AND session_id <> $1))
RETURNING function_id;

-- name: set_deadline
UPDATE runs SET deadline_at = $1 WHERE id = $2;

-- name: next_deadline
SELECT MIN(deadline_at) FROM runs WHERE deadline_at > $1;

-- name: due_deadline_left
-- After the deadline phase: one still due was skipped (locked by another gateway's batch).
SELECT 1 FROM runs WHERE deadline_at <= $1 LIMIT 1;

-- name: all_function_ids
SELECT id FROM functions;

-- =============================== registration ===============================

-- name: upsert_app
INSERT INTO apps (id, version, registered_at) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET version = excluded.version,
    registered_at = excluded.registered_at;

-- name: deactivate_functions
UPDATE functions SET active = 0 WHERE app_id = $1;

-- name: activate_function
-- A function another connected worker of the app still serves stays active (app-id conflict).
UPDATE functions SET active = 1 WHERE id = $1;

-- name: upsert_function
INSERT INTO functions (id, app_id, config, active, updated_at) VALUES ($1, $2, $3, 1, $4)
ON CONFLICT (id) DO UPDATE SET config = excluded.config, active = 1,
    updated_at = excluded.updated_at;

-- name: function_config
SELECT config FROM functions WHERE id = $1 AND active = 1;

-- name: stored_function_config
-- The function's config as registered last, active or not (NULL: never registered).
SELECT config FROM functions WHERE id = $1;

-- name: fill_arrivals
-- Runs of $1 not started, ready or waiting to be, without an arrival (queued while the
-- function had no priority): given the seq of their last event, as set_run_flow would have.
-- The function now has a priority, and its runs are claimed in runs_by_priority's order, an
-- index that on SQLite holds only runs with an arrival (migration 0022).
UPDATE runs SET arrival = (SELECT COALESCE(MAX(event_seq), 0) FROM run_events
                           WHERE run_id = runs.id)
WHERE function_id = $1 AND arrival IS NULL AND started_at IS NULL
AND status IN ('Queued', 'Sleeping', 'Waiting');

-- ================================== reads ===================================

-- name: all_functions
SELECT f.id, f.app_id, a.version, f.config, f.active, f.updated_at
FROM functions f LEFT JOIN apps a ON a.id = f.app_id ORDER BY f.id;

-- name: get_run
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE id = $1;

-- name: event_exists
SELECT 1 FROM events WHERE id = $1 LIMIT 1;

-- name: runs_for_event
SELECT r.id, r.function_id, r.status, r.fence, r.attempt, r.event_ids, r.output, r.error,
       r.queued_at, r.started_at, r.ended_at, r.available_at, r.parent_run_id
FROM events e JOIN run_events re ON re.event_seq = e.seq JOIN runs r ON r.id = re.run_id
WHERE e.id = $1 ORDER BY r.id;

-- name: list_runs
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE id < $1 ORDER BY id DESC LIMIT $2;

-- name: list_runs_by_status
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE status = $3 AND id < $1 ORDER BY id DESC LIMIT $2;

-- name: list_runs_by_function_status
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE function_id = $3 AND status = $4 AND id < $1 ORDER BY id DESC LIMIT $2;

-- name: queue_depths
-- For /metrics: runs ready to lease per function, and the oldest one's ready time.
SELECT function_id, COUNT(*), MIN(available_at) FROM runs
WHERE status IN ('Queued', 'Sleeping', 'Waiting') AND available_at <= $1
GROUP BY function_id;

-- name: insert_access_key
INSERT INTO access_keys (id, kind, name, hash, hint, read_only, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: list_access_keys
SELECT id, kind, name, hint, read_only, created_at, revoked_at
FROM access_keys ORDER BY created_at, id;

-- name: revoke_access_key
UPDATE access_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL;

-- name: active_access_keys
SELECT hash, kind, read_only FROM access_keys WHERE revoked_at IS NULL;

-- webhooks and the event log

-- name: insert_webhook
INSERT INTO webhooks (id, name, transform, verify, created_at) VALUES ($1, $2, $3, $4, $5);

-- name: get_webhook
SELECT id, name, transform, verify, created_at FROM webhooks WHERE id = $1;

-- name: list_webhooks
SELECT id, name, transform, verify, created_at FROM webhooks ORDER BY created_at, id;

-- name: delete_webhook
DELETE FROM webhooks WHERE id = $1;

-- name: event_log
-- Newest first, below the cursor's seq: new events land above it, so a page never shifts.
SELECT seq, payload, received_at FROM events WHERE seq < $1 ORDER BY seq DESC LIMIT $2;

-- name: event_log_by_name
SELECT seq, payload, received_at FROM events WHERE name = $3 AND seq < $1
ORDER BY seq DESC LIMIT $2;

-- name: event_by_id
-- The latest event stored with this id (an id may come back after the dedup window).
SELECT seq, payload, received_at FROM events WHERE id = $1 ORDER BY seq DESC LIMIT 1;

-- name: set_next_tick
UPDATE schedules SET next_tick = $1 WHERE function_id = $2 AND cron = $3 AND tz = $4;

-- name: delete_schedule
DELETE FROM schedules WHERE function_id = $1 AND cron = $2 AND tz = $3;

-- name: insert_schedule
-- An unchanged schedule keeps its next tick (a re-registration neither skips nor repeats one).
INSERT INTO schedules (function_id, cron, tz, next_tick) VALUES ($1, $2, $3, $4)
ON CONFLICT (function_id, cron, tz) DO NOTHING;

-- name: app_schedules
SELECT s.function_id, s.cron, s.tz FROM schedules s JOIN functions f ON f.id = s.function_id
WHERE f.app_id = $1;

-- name: function_schedules
SELECT cron, tz FROM schedules WHERE function_id = $1;

-- name: all_schedules
SELECT function_id, cron, tz, next_tick FROM schedules;

-- name: insert_cron_tick
-- The (function, tick) key: a tick that started a run starts no other (a second gateway's
-- insert waits for the first to commit, then inserts nothing).
INSERT INTO cron_ticks (function_id, tick) VALUES ($1, $2) ON CONFLICT DO NOTHING;

-- name: prune_cron_ticks
DELETE FROM cron_ticks WHERE function_id = $1 AND tick < $2;

-- name: next_schedule
SELECT MIN(next_tick) FROM schedules WHERE next_tick > $1;

-- ========================= flow control: admission ==========================

-- name: lock_flow_key
-- The key's row, created if new, locked until commit, and its value: a second gateway
-- admitting an event of the same key waits here, then decides on this one's outcome.
INSERT INTO flow_keys (function_id, kind, key_hash, until_at) VALUES ($1, $2, $3, NULL)
ON CONFLICT (function_id, kind, key_hash) DO UPDATE SET until_at = flow_keys.until_at
RETURNING until_at;

-- name: set_flow_key
UPDATE flow_keys SET until_at = $1 WHERE function_id = $2 AND kind = $3 AND key_hash = $4;

-- name: singleton_live_run
SELECT id FROM runs WHERE singleton_key = $1
AND status IN ('Queued', 'Running', 'Sleeping', 'Waiting') ORDER BY id LIMIT 1;

-- name: set_singleton_key
UPDATE runs SET singleton_key = $1 WHERE id = $2;

-- name: insert_skipped_run
-- A run flow control refused at admission: created and ended at once, never leased.
INSERT INTO runs (id, function_id, status, available_at, event_ids, queued_at, parent_run_id,
                  parent_step_id, ended_at, skipped)
VALUES ($1, $2, 'Skipped', NULL, $3, $4, $5, $6, $4, $7);

-- =================== flow control: throttle and priority ====================

-- name: lock_throttle_tat
-- The key's TAT, its row created if new and (on PostgreSQL) locked until the admitting
-- transaction commits: gateways sharing the key queue here, each reserving its own slot.
INSERT INTO throttle_tat (function_id, key_hash, tat) VALUES ($1, $2, NULL)
ON CONFLICT (function_id, key_hash) DO UPDATE SET tat = throttle_tat.tat
RETURNING tat;

-- name: set_throttle_tat
UPDATE throttle_tat SET tat = $1 WHERE function_id = $2 AND key_hash = $3;

-- name: set_run_flow
UPDATE runs SET hold_option = $1, hold_key = $2, priority = $3, arrival = $4 WHERE id = $5;

-- ======================== flow control: concurrency =========================

-- name: set_run_concurrency
UPDATE runs SET slot1 = $1, slot2 = $2, cqueue = $3, conc_key = $4 WHERE id = $5;

-- name: conc_cursor
SELECT cursor FROM conc_cursors WHERE function_id = $1;

-- name: set_conc_cursor
INSERT INTO conc_cursors (function_id, cursor) VALUES ($1, $2)
ON CONFLICT (function_id) DO UPDATE SET cursor = excluded.cursor;

-- name: conc_key_counts
SELECT cqueue, MAX(conc_key), SUM(CASE WHEN status = 'Running' THEN 0 ELSE 1 END),
       SUM(CASE WHEN status = 'Running' THEN 1 ELSE 0 END)
FROM runs WHERE function_id = $1 AND cqueue IS NOT NULL
    AND status IN ('Queued', 'Running', 'Sleeping', 'Waiting')
GROUP BY cqueue ORDER BY 3 DESC, 4 DESC LIMIT $2;

-- name: app_function_ids
SELECT id FROM functions WHERE app_id = $1 AND active = 1;

-- ===================== flow control: debounce and batch =====================

-- name: lock_window
-- The key's window row, created if new (no run yet), locked until commit: a second gateway
-- placing an event of the same key waits here, then sees this one's window.
INSERT INTO flow_windows (function_id, key_hash, run_id, first_at, deadline)
VALUES ($1, $2, NULL, NULL, NULL)
ON CONFLICT (function_id, key_hash) DO UPDATE SET run_id = flow_windows.run_id
RETURNING run_id, first_at, deadline;

-- name: set_window
UPDATE flow_windows SET run_id = $1, first_at = $2, deadline = $3
WHERE function_id = $4 AND key_hash = $5;

-- name: close_window
DELETE FROM flow_windows WHERE function_id = $1 AND key_hash = $2;

-- name: grow_window_run
-- The pending run after an event joined its window: its events, start and start deadline.
UPDATE runs SET event_ids = $1, available_at = $2, deadline_at = $3, arrival = $4
WHERE id = $5 AND status = 'Queued' AND fence = 0;

-- name: delete_run_events
DELETE FROM run_events WHERE run_id = $1;

-- ================= dashboard: selections, counts, timeline ==================

-- name: scan_runs
SELECT r.id, (SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
              WHERE re.run_id = r.id AND re.position = 0)
FROM runs r
WHERE r.id >= $1 AND r.id < $2
ORDER BY r.id DESC LIMIT $3;

-- name: status_counts
-- Counts per status of every function, from runs_by_function_status alone.
SELECT function_id, status, COUNT(*) FROM runs GROUP BY function_id, status;

-- name: status_counts_of_function
SELECT status, COUNT(*) FROM runs WHERE function_id = $1 GROUP BY status;

-- name: step_attempts_of_run
SELECT step_id, attempt, status, started_at, ended_at, retry_at, error
FROM step_attempts WHERE run_id = $1 ORDER BY step_id, attempt;

-- name: child_runs
SELECT id, function_id, status, queued_at, started_at, ended_at, parent_step_id
FROM runs WHERE parent_run_id = $1 ORDER BY id;
