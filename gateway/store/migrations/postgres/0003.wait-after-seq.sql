-- A wait (and a cancel_on) matches only events received after its run was created: events
-- whose seq is above after_seq, the highest seq of the run's own events. So a run is never
-- resumed or cancelled by its own trigger, nor by an event stored before it in one batch.
-- Waits stored before this migration keep 0: they match as they did.

ALTER TABLE waits ADD COLUMN after_seq BIGINT NOT NULL DEFAULT 0;
