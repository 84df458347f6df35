-- What a worker noticed about a run (a replay that skipped recorded steps): a JSON array of
-- lines, shown as the run's "warnings" by the API. NULL for almost every run.

ALTER TABLE runs ADD COLUMN warnings TEXT;
