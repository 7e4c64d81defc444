-- Place-only public tips (issue 19, DESIGN §4): a citizen may describe the place in words
-- instead of sending coordinates, so `reports.lat` and `reports.lon` become nullable. Only
-- reports of source `public` are ever stored without them (the other sources' schemas still
-- require a point); the dispatcher escalates such a report to the desk, which places it
-- (`POST /api/v1/reports/{id}/location`). Keep semantically identical to the other backend's
-- file.
ALTER TABLE reports ALTER COLUMN lat DROP NOT NULL;
ALTER TABLE reports ALTER COLUMN lon DROP NOT NULL;

-- The reports waiting for the desk to place them.
CREATE INDEX reports_unlocated ON reports (created_at) WHERE lat IS NULL;
