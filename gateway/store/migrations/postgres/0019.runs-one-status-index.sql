-- Cheaper leases and ends (issue 12, goal 3). A lease and an end change a run's status, an
-- indexed column, so neither update is HOT: each writes a new entry in every index of runs.
-- Three full indexes held the status or served the same reads: runs_by_function (function,
-- id), runs_by_status (status, id, function) and runs_by_function_status (function, status,
-- id). The last serves the other two's readers (queries/postgres.sql: one seek per status of
-- a function, or per function for a status), so the two go: about 10 µs of backend CPU per
-- run less (insert, lease and end each write two index entries fewer). SQLite keeps them (its
-- writes cost differently: see its migrations).
DROP INDEX runs_by_function;
DROP INDEX runs_by_status;
