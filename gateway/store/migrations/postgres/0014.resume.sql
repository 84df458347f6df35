-- Fewer re-runs after a gateway restart (issue 13): a restart requeues the leases it finds
-- without bumping their fences and marks them ``resumable``; a worker that lived offers them
-- back when it reconnects (Hello.resume) and keeps them, its unacknowledged checkpoints
-- accepted, if nobody else was leased them since.
ALTER TABLE runs ADD COLUMN resumable INTEGER NOT NULL DEFAULT 0;
