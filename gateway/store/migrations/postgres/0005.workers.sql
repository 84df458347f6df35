-- Each gateway's connected workers, as it last published them with its beat (a JSON array),
-- so GET /v1/workers on any gateway sharing the database lists every gateway's workers.
ALTER TABLE gateways ADD COLUMN workers TEXT;
