-- runs_by_priority holds only the runs that have an arrival (issue 12, goal 1). It held every
-- ready run, so each run of every function paid an entry at its insert and its removal at its
-- lease (about 1 µs of the writer's CPU per run), though only ready_runs_by_priority reads it,
-- for functions with a priority. A run gets its arrival (the highest seq of its events) from
-- set_run_flow, for each run of a function with a priority or a throttle, and from the
-- windows of debounce and batch; the runs of other functions have none and now stay out.
--
-- Runs queued while their function had no priority have no arrival either: the store gives
-- them one (fill_arrivals, the seq of their last event: they keep their place among ties)
-- when the function is registered with a priority it did not have before (gateway/store/sql.py
-- register_app), and here, for the functions that have one now.
UPDATE runs SET arrival = (SELECT COALESCE(MAX(event_seq), 0) FROM run_events
                           WHERE run_id = runs.id)
WHERE arrival IS NULL AND started_at IS NULL
AND status IN ('Queued', 'Sleeping', 'Waiting')
AND function_id IN (SELECT id FROM functions WHERE json_extract(config, '$.priority') IS NOT NULL);

DROP INDEX runs_by_priority;
CREATE INDEX runs_by_priority ON runs (function_id, (available_at - priority), arrival)
    WHERE arrival IS NOT NULL AND available_at IS NOT NULL
    AND (status = 'Queued' OR status = 'Sleeping' OR status = 'Waiting');
