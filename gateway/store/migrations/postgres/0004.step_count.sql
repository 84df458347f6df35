-- How many steps each run has recorded, for --max-steps: kept on the run row so a checkpoint
-- batch reads it with the run, instead of counting the run's steps each time.
ALTER TABLE runs ADD COLUMN step_count INTEGER NOT NULL DEFAULT 0;

UPDATE runs SET step_count = (SELECT count(*) FROM steps WHERE steps.run_id = runs.id)
WHERE status NOT IN ('Completed', 'Failed', 'Cancelled', 'Skipped');
