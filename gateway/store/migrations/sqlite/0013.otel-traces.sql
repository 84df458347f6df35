-- Trace context (issue 11, OpenTelemetry): an event keeps the W3C ``traceparent`` it arrived
-- with (the HTTP header, or the gateway's intake span; for a child run's event, the invoking
-- step's span). A run's span continues the trace of its first event, so a run resumed on
-- another worker, or after a gateway restart, stays in the same trace. NULL: no trace.
ALTER TABLE events ADD COLUMN traceparent TEXT;
