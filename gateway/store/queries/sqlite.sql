-- Named queries for the SQLite store. Parameters are positional (?1, ?2...); a list parameter
-- arrives as a JSON array and is read with json_each. Every query here has a twin of the
-- same name and meaning in postgres.sql.

-- ============================== events and runs ==============================

-- name: recent_event_ids
SELECT id FROM events WHERE id IN (SELECT value FROM json_each(?1)) AND received_at > ?2;

-- name: reserve_event_seqs
-- One writer owns a SQLite file, so the next seqs are simply past the largest.
WITH RECURSIVE n(x) AS (SELECT 1 WHERE ?1 > 0 UNION ALL SELECT x + 1 FROM n WHERE x < ?1)
SELECT (SELECT COALESCE(MAX(seq), 0) FROM events) + x FROM n;

-- name: lock_event_names
-- One writer owns a SQLite file: matching events and waits is serialized already.
SELECT 1 WHERE ?1 IS NOT NULL;

-- name: lock_event_name_for_wait
SELECT 1 WHERE ?1 IS NOT NULL;

-- name: insert_event
INSERT INTO events (seq, id, name, payload, received_at) VALUES (?1, ?2, ?3, ?4, ?5);

-- name: insert_run
INSERT INTO runs (id, function_id, status, available_at, event_ids, queued_at, parent_run_id,
                  parent_step_id, deadline_at)
VALUES (?1, ?2, 'Queued', ?3, ?4, ?5, ?6, ?7, ?8);

-- name: insert_run_event
INSERT INTO run_events (run_id, position, event_seq) VALUES (?1, ?2, ?3);

-- name: run_for_replay
SELECT function_id FROM runs WHERE id = ?1;

-- name: run_event_rows
SELECT e.seq, e.id, e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
WHERE re.run_id = ?1 ORDER BY re.position;

-- name: run_trigger
SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
WHERE re.run_id = ?1 AND re.position = 0;

-- name: run_trigger_and_seq
-- The run's trigger (``event`` in if_) and the highest seq of its events: a wait of the run
-- matches only events stored after that.
SELECT e.payload, (SELECT MAX(event_seq) FROM run_events WHERE run_id = ?1)
FROM run_events re JOIN events e ON e.seq = re.event_seq
WHERE re.run_id = ?1 AND re.position = 0;

-- name: events_since
-- A wait's look-back: events of the name received since the gateway last heard from the run,
-- never the run's own events nor older ones (seq above the run's highest).
SELECT payload FROM events WHERE name = ?1 AND received_at >= ?2 AND seq > ?3
ORDER BY seq;

-- ================================ checkpoints ================================

-- name: checkpoint_runs
SELECT id, fence, status, function_id, state_bytes, parent_run_id, parent_step_id,
    step_count FROM runs
WHERE id IN (SELECT value FROM json_each(?1));

-- name: upsert_step
-- started_at stays the first attempt's; attempt_started_at is this one's (step_attempts).
INSERT INTO steps (run_id, step_id, kind, status, attempts, output, error, wake_at, started_at,
                   ended_at, attempt_started_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9)
ON CONFLICT (run_id, step_id) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, output = excluded.output,
    error = excluded.error, wake_at = excluded.wake_at, ended_at = excluded.ended_at,
    attempt_started_at = excluded.attempt_started_at
WHERE steps.status NOT IN ('Completed', 'Failed');

-- name: insert_pending_step
INSERT INTO steps (run_id, step_id, kind, status, attempts, wake_at, started_at, child_run_id)
VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7)
ON CONFLICT (run_id, step_id) DO NOTHING;

-- name: insert_done_step
INSERT INTO steps (run_id, step_id, kind, status, attempts, output, started_at, ended_at)
VALUES (?1, ?2, ?3, 'Completed', 1, ?4, ?5, ?5)
ON CONFLICT (run_id, step_id) DO NOTHING;

-- name: resolve_step
UPDATE steps SET status = ?1, output = ?2, error = ?3, ended_at = ?4, wake_at = NULL
WHERE run_id = ?5 AND step_id = ?6 AND status IN ('Sleeping', 'Waiting', 'Invoking');

-- name: set_step_child
UPDATE steps SET child_run_id = ?1 WHERE run_id = ?2 AND step_id = ?3;

-- name: run_progressed
-- A completed step (it recorded a result, so ?1 > 0) also gives the function body a fresh
-- retry budget, as Inngest does.
UPDATE runs SET state_bytes = state_bytes + ?1, step_count = step_count + ?3,
    lease_losses = 0, attempt = CASE WHEN ?1 > 0 THEN 0 ELSE attempt END
WHERE id = ?2;

-- name: reset_attempt
-- A step completed without its result passing through run_progressed (send_event,
-- a wait's event, a child's output, a sleep or wait timeout settled at a lease).
UPDATE runs SET attempt = 0 WHERE id = ?1;

-- name: add_steps
UPDATE runs SET step_count = step_count + ?1 WHERE id = ?2;

-- name: recount_steps
UPDATE runs SET step_count = (SELECT count(*) FROM steps WHERE steps.run_id = runs.id)
WHERE id = ?1
RETURNING step_count;

-- name: step_exists
SELECT 1 FROM steps WHERE run_id = ?1 AND step_id = ?2;

-- name: requeue_run
UPDATE runs SET status = 'Queued', session_id = NULL, available_at = ?1,
    attempt = COALESCE(?2, attempt), error = COALESCE(?3, error)
WHERE id = ?4;

-- name: pending_steps
SELECT status, MIN(wake_at) FROM steps
WHERE run_id = ?1 AND status IN ('Retrying', 'Sleeping', 'Waiting', 'Invoking')
GROUP BY status;

-- name: suspend_run
UPDATE runs SET status = ?1, available_at = ?2, session_id = NULL
WHERE id = ?3 AND status NOT IN ('Completed', 'Failed', 'Cancelled', 'Skipped')
RETURNING function_id;

-- ============================ endings and commands ============================

-- name: run_for_end
SELECT function_id, session_id, fence, parent_run_id, parent_step_id, status
FROM runs WHERE id = ?1;

-- name: end_run
UPDATE runs SET status = ?1, output = ?2, error = ?3, ended_at = ?4, session_id = NULL,
    available_at = NULL, deadline_at = NULL
WHERE id = ?5;

-- name: live_children
SELECT id FROM runs WHERE parent_run_id = ?1
AND status NOT IN ('Completed', 'Failed', 'Cancelled', 'Skipped');

-- name: due_deadlines
SELECT id, started_at, function_id FROM runs WHERE deadline_at <= ?1;

-- name: session_runs
SELECT id, function_id, lease_losses FROM runs WHERE session_id = ?1 AND status = 'Running';

-- name: set_lease_losses
UPDATE runs SET lease_losses = ?1 WHERE id = ?2;

-- name: set_run_warnings
UPDATE runs SET warnings = ?1 WHERE id = ?2;

-- name: runs_notes
-- What the worker noticed (warnings), why flow control skipped a run or what holds it back,
-- for a page of runs.
SELECT id, warnings, skipped, hold_option, hold_key FROM runs
WHERE id IN (SELECT value FROM json_each(?1))
AND (warnings IS NOT NULL OR skipped IS NOT NULL OR hold_option IS NOT NULL);

-- name: forgive_lease_loss
UPDATE runs SET lease_losses = lease_losses - 1 WHERE id = ?1 AND lease_losses > 0;

-- name: release_run
-- A revoked lease: bump the fence now, so its holder's late checkpoints are refused.
UPDATE runs SET status = 'Queued', session_id = NULL, available_at = ?1, lease_losses = ?2,
    fence = fence + 1
WHERE id = ?3;

-- name: return_lease
UPDATE runs SET status = 'Queued', session_id = NULL, available_at = ?1, fence = fence + 1
WHERE id = ?2 AND fence = ?3 AND status = 'Running' RETURNING function_id;

-- name: recover_leases
UPDATE runs SET status = 'Queued', session_id = NULL, available_at = ?1, fence = fence + 1
WHERE status = 'Running';

-- =================================== waits ===================================

-- name: insert_wait
INSERT INTO waits (run_id, step_id, kind, event_name, if_, match_path, match_key, trigger,
                   expires_at, created_at, after_seq)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
ON CONFLICT (run_id, step_id) DO NOTHING;

-- name: has_waits
SELECT 1 FROM waits WHERE event_name = ?1 LIMIT 1;

-- name: wait_paths
-- The distinct paths waits on an event name are indexed by: a skip-scan, one index seek per
-- path, so 10,000 waits on one name and path cost one seek, not a scan.
WITH RECURSIVE p(path) AS (
    SELECT MIN(match_path) FROM waits WHERE event_name = ?1
    UNION ALL
    SELECT (SELECT MIN(match_path) FROM waits WHERE event_name = ?1 AND match_path > p.path)
    FROM p WHERE p.path IS NOT NULL
)
SELECT path FROM p WHERE path IS NOT NULL;

-- name: waits_for
-- The waits an event (seq ?4) may match: only those of runs created before it was stored.
SELECT run_id, step_id, kind, if_, trigger, expires_at FROM waits
WHERE event_name = ?1 AND match_path = ?2 AND match_key = ?3 AND after_seq < ?4
ORDER BY created_at;

-- name: delete_wait
DELETE FROM waits WHERE run_id = ?1 AND step_id = ?2;

-- name: end_pending_steps
-- A run ended: its sleeps, waits, invokes and retries still pending never will resolve.
UPDATE steps SET status = 'Cancelled', ended_at = ?1, wake_at = NULL
WHERE run_id = ?2 AND status IN ('Retrying', 'Sleeping', 'Waiting', 'Invoking');

-- name: delete_waits
DELETE FROM waits WHERE run_id = ?1;

-- name: wake_run
UPDATE runs SET status = 'Queued', available_at = ?1
WHERE id = ?2 AND status IN ('Queued', 'Sleeping', 'Waiting') RETURNING function_id;

-- =================================== leases ==================================

-- name: ready_runs
SELECT available_at, id, function_id, fence, attempt, started_at FROM runs
WHERE function_id = ?1 AND status IN ('Queued', 'Sleeping', 'Waiting') AND available_at <= ?2
ORDER BY available_at LIMIT ?3;

-- name: lease_run
UPDATE runs SET status = 'Running', fence = fence + 1, session_id = ?1,
    started_at = COALESCE(started_at, ?2)
WHERE id = ?3;

-- name: set_deadline
UPDATE runs SET deadline_at = ?1 WHERE id = ?2;

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

-- name: next_ready
-- The earliest future time a run of a function becomes ready (one index seek).
SELECT MIN(available_at) FROM runs
WHERE function_id = ?1 AND status IN ('Queued', 'Sleeping', 'Waiting') AND available_at > ?2;

-- name: next_deadline
SELECT MIN(deadline_at) FROM runs WHERE deadline_at > ?1;

-- name: all_function_ids
SELECT id FROM functions;

-- ================================ registration ===============================

-- name: upsert_app
INSERT INTO apps (id, version, registered_at) VALUES (?1, ?2, ?3)
ON CONFLICT (id) DO UPDATE SET version = excluded.version,
    registered_at = excluded.registered_at;

-- name: deactivate_functions
UPDATE functions SET active = 0 WHERE app_id = ?1;

-- name: activate_function
-- A function another connected worker of the app still serves stays active (app-id conflict).
UPDATE functions SET active = 1 WHERE id = ?1;

-- name: upsert_function
INSERT INTO functions (id, app_id, config, active, updated_at) VALUES (?1, ?2, ?3, 1, ?4)
ON CONFLICT (id) DO UPDATE SET config = excluded.config, active = 1,
    updated_at = excluded.updated_at;

-- name: function_config
SELECT config FROM functions WHERE id = ?1 AND active = 1;

-- =================================== reads ===================================

-- name: all_functions
SELECT f.id, f.app_id, a.version, f.config, f.active, f.updated_at
FROM functions f LEFT JOIN apps a ON a.id = f.app_id ORDER BY f.id;

-- name: get_run
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE id = ?1;

-- name: runs_steps
-- The steps of a page of runs, in one query (not one per run).
SELECT run_id, step_id, kind, status, attempts, output, error, started_at, ended_at
FROM steps WHERE run_id IN (SELECT value FROM json_each(?1))
ORDER BY run_id, started_at, step_id;

-- name: event_exists
SELECT 1 FROM events WHERE id = ?1 LIMIT 1;

-- name: runs_for_event
SELECT r.id, r.function_id, r.status, r.fence, r.attempt, r.event_ids, r.output, r.error,
       r.queued_at, r.started_at, r.ended_at, r.available_at, r.parent_run_id
FROM events e JOIN run_events re ON re.event_seq = e.seq JOIN runs r ON r.id = re.run_id
WHERE e.id = ?1 ORDER BY r.id;

-- name: list_runs
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE id < ?1 ORDER BY id DESC LIMIT ?2;

-- name: list_runs_by_function
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE function_id = ?3 AND id < ?1 ORDER BY id DESC LIMIT ?2;

-- name: list_runs_by_status
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE status = ?3 AND id < ?1 ORDER BY id DESC LIMIT ?2;

-- name: list_runs_by_function_status
SELECT id, function_id, status, fence, attempt, event_ids, output, error, queued_at,
       started_at, ended_at, available_at, parent_run_id
FROM runs WHERE function_id = ?3 AND status = ?4 AND id < ?1 ORDER BY id DESC LIMIT ?2;

-- name: queue_depths
-- For /metrics: runs ready to lease per function, and the oldest one's ready time.
SELECT function_id, COUNT(*), MIN(available_at) FROM runs
WHERE status IN ('Queued', 'Sleeping', 'Waiting') AND available_at <= ?1
GROUP BY function_id;

-- --- access keys (gateway/store/keys.py) ---------------------------------------------------

-- name: insert_access_key
INSERT INTO access_keys (id, kind, name, hash, hint, read_only, created_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7);

-- name: list_access_keys
SELECT id, kind, name, hint, read_only, created_at, revoked_at
FROM access_keys ORDER BY created_at, id;

-- name: revoke_access_key
UPDATE access_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL;

-- name: active_access_keys
SELECT hash, kind, read_only FROM access_keys WHERE revoked_at IS NULL;

-- webhooks and the event log

-- name: insert_webhook
INSERT INTO webhooks (id, name, transform, verify, created_at) VALUES (?1, ?2, ?3, ?4, ?5);

-- name: get_webhook
SELECT id, name, transform, verify, created_at FROM webhooks WHERE id = ?1;

-- name: list_webhooks
SELECT id, name, transform, verify, created_at FROM webhooks ORDER BY created_at, id;

-- name: delete_webhook
DELETE FROM webhooks WHERE id = ?1;

-- name: event_log
-- Newest first, below the cursor's seq: new events land above it, so a page never shifts.
SELECT seq, payload, received_at FROM events WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2;

-- name: event_log_by_name
SELECT seq, payload, received_at FROM events WHERE name = ?3 AND seq < ?1
ORDER BY seq DESC LIMIT ?2;

-- name: event_by_id
-- The latest event stored with this id (an id may come back after the dedup window).
SELECT seq, payload, received_at FROM events WHERE id = ?1 ORDER BY seq DESC LIMIT 1;

-- name: event_run_ids
SELECT event_seq, run_id FROM run_events WHERE event_seq IN (SELECT value FROM json_each(?1))
ORDER BY run_id;

-- cron ticks and delayed runs

-- name: due_schedules
SELECT function_id, cron, tz, next_tick FROM schedules WHERE next_tick <= ?1
ORDER BY next_tick LIMIT ?2;

-- name: set_next_tick
UPDATE schedules SET next_tick = ?1 WHERE function_id = ?2 AND cron = ?3 AND tz = ?4;

-- name: delete_schedule
DELETE FROM schedules WHERE function_id = ?1 AND cron = ?2 AND tz = ?3;

-- name: insert_schedule
-- An unchanged schedule keeps its next tick (a re-registration neither skips nor repeats one).
INSERT INTO schedules (function_id, cron, tz, next_tick) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (function_id, cron, tz) DO NOTHING;

-- name: app_schedules
SELECT s.function_id, s.cron, s.tz FROM schedules s JOIN functions f ON f.id = s.function_id
WHERE f.app_id = ?1;

-- name: function_schedules
SELECT cron, tz FROM schedules WHERE function_id = ?1;

-- name: all_schedules
SELECT function_id, cron, tz, next_tick FROM schedules;

-- name: insert_cron_tick
-- The (function, tick) key: a tick that started a run starts no other.
INSERT INTO cron_ticks (function_id, tick) VALUES (?1, ?2) ON CONFLICT DO NOTHING;

-- name: prune_cron_ticks
DELETE FROM cron_ticks WHERE function_id = ?1 AND tick < ?2;

-- name: next_schedule
SELECT MIN(next_tick) FROM schedules WHERE next_tick > ?1;

-- ========================== flow control: admission ==========================


-- name: lock_flow_key
-- The key's row, created if new, and its value. One writer owns a SQLite file: no lock needed.
INSERT INTO flow_keys (function_id, kind, key_hash, until_at) VALUES (?1, ?2, ?3, NULL)
ON CONFLICT (function_id, kind, key_hash) DO UPDATE SET until_at = flow_keys.until_at
RETURNING until_at;

-- name: set_flow_key
UPDATE flow_keys SET until_at = ?1 WHERE function_id = ?2 AND kind = ?3 AND key_hash = ?4;

-- name: sweep_flow_keys
-- Rows whose time has passed decide like absent ones (a TAT or a hold in the past, a
-- singleton lock not taken since): dropped so high-cardinality keys do not pile up.
-- At most ?3 rows a time: the cost stays proportional to what expired.
DELETE FROM flow_keys WHERE (function_id, kind, key_hash) IN (
    SELECT function_id, kind, key_hash FROM flow_keys WHERE function_id = ?1 AND until_at < ?2
    LIMIT ?3);

-- name: singleton_live_run
SELECT id FROM runs WHERE singleton_key = ?1
AND status IN ('Queued', 'Running', 'Sleeping', 'Waiting') ORDER BY id LIMIT 1;

-- name: set_singleton_key
UPDATE runs SET singleton_key = ?1 WHERE id = ?2;

-- name: insert_skipped_run
-- A run flow control refused at admission: created and ended at once, never leased.
INSERT INTO runs (id, function_id, status, available_at, event_ids, queued_at, parent_run_id,
                  parent_step_id, ended_at, skipped)
VALUES (?1, ?2, 'Skipped', NULL, ?3, ?4, ?5, ?6, ?4, ?7);

-- ===================== flow control: throttle and priority =====================

-- name: throttle_seed
INSERT INTO throttle_tat (function_id, key_hash, tat) VALUES (?1, ?2, NULL)
ON CONFLICT DO NOTHING;

-- name: throttle_tat
-- The writer holds the database: no other transaction moves the TAT meanwhile.
SELECT tat FROM throttle_tat WHERE function_id = ?1 AND key_hash = ?2;

-- name: set_throttle_tat
UPDATE throttle_tat SET tat = ?1 WHERE function_id = ?2 AND key_hash = ?3;

-- name: set_run_flow
UPDATE runs SET hold_option = ?1, hold_key = ?2, priority = ?3, arrival = ?4 WHERE id = ?5;

-- name: ready_runs_by_priority
-- As ready_runs, in priority order (runs_by_priority): as if queued ``priority`` s earlier,
-- ties by arrival.
SELECT available_at, id, function_id, fence, attempt, started_at, available_at - priority
FROM runs INDEXED BY runs_by_priority  -- without statistics SQLite would sort every ready run
WHERE function_id = ?1 AND status IN ('Queued', 'Sleeping', 'Waiting') AND available_at <= ?2
ORDER BY available_at - priority, arrival LIMIT ?3;


-- ======================= dashboard: selections, counts, timeline =======================
-- A run id is a ULID of its queue time, so a time range is an id range: these scans walk
-- runs_by_function (or the primary key) newest first and read no run outside the range.

-- name: scan_runs
SELECT r.id, (SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
              WHERE re.run_id = r.id AND re.position = 0)
FROM runs r
WHERE r.id >= ?1 AND r.id < ?2
ORDER BY r.id DESC LIMIT ?3;

-- name: scan_runs_by_function
SELECT r.id, (SELECT e.payload FROM run_events re JOIN events e ON e.seq = re.event_seq
              WHERE re.run_id = r.id AND re.position = 0)
FROM runs r INDEXED BY runs_by_function
WHERE r.function_id = ?1 AND r.id >= ?2 AND r.id < ?3
ORDER BY r.id DESC LIMIT ?4;

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

-- name: status_counts
-- Counts per status of every function, from runs_by_function_status alone.
SELECT function_id, status, COUNT(*) FROM runs GROUP BY function_id, status;

-- name: status_counts_of_function
SELECT status, COUNT(*) FROM runs WHERE function_id = ?1 GROUP BY status;

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

-- name: step_attempts_of_run
SELECT step_id, attempt, status, started_at, ended_at, retry_at, error
FROM step_attempts WHERE run_id = ?1 ORDER BY step_id, attempt;

-- name: child_runs
SELECT id, function_id, status, queued_at, started_at, ended_at, parent_step_id
FROM runs WHERE parent_run_id = ?1 ORDER BY id;
