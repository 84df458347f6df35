-- Cheaper leases and ends (issue 12, goal 3). A lease and an end change a run's status, an
-- indexed column, so neither update is HOT: each writes a new entry in every index of runs,
-- about 1.5 µs of backend CPU an entry. runs_by_function (function, id) served only what
-- runs_by_function_status (function, status, id) serves with one seek per status of the
-- function (queries/postgres.sql: list_runs_by_function, scan_runs_by_function), so it goes:
-- insert, lease and end each write one index entry fewer. SQLite keeps it (its writes cost
-- differently: see its migrations).
DROP INDEX runs_by_function;
