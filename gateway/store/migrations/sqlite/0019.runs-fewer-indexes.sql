-- Fewer index entries per run on the hot path (issue 12, goal 1). A run is inserted (Queued),
-- leased (Running, a session set) and ended (Completed, the session cleared); each index of
-- runs is opened at each of those writes, and each one keyed on what changed deletes and
-- inserts an entry. Two indexes go, and one takes a column more:
--
-- * runs_by_session goes: runs_by_status holds session_id after its keys, so a session's runs
--   are found among the runs leased now (session_runs: one seek of status 'Running', the
--   session read from the entries). Its entry changes at a lease and an end anyway (the
--   status does); a run not leased has no session, a NULL that costs one byte.
-- * runs_by_function goes: runs_by_function_status serves its readers (list_runs_by_function,
--   scan_runs_by_function: one seek per status the function's runs have, merged by id), as
--   PostgreSQL's migration 0019 does.
--
-- docs/performance.md ("SQLite: two indexes fewer on runs") has the figures;
-- tests/integration/test_sqlite_plans.py checks that each reader still seeks an index.
DROP INDEX runs_by_function;
DROP INDEX runs_by_session;
DROP INDEX runs_by_status;
CREATE INDEX runs_by_status ON runs (status, id, function_id, session_id);
