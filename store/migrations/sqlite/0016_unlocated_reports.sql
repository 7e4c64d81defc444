-- Place-only public tips (issue 19, DESIGN §4): a citizen may describe the place in words
-- instead of sending coordinates, so `reports.lat` and `reports.lon` become nullable. Only
-- reports of source `public` are ever stored without them (the other sources' schemas still
-- require a point); the dispatcher escalates such a report to the desk, which places it
-- (`POST /api/v1/reports/{id}/location`). Keep semantically identical to the other backend's
-- file.
--
-- SQLite cannot drop a NOT NULL with ALTER TABLE, and rebuilding `reports` inside the
-- migration's transaction would trip the foreign keys of `assignments` (see 0012). Relaxing a
-- constraint changes no stored row's meaning, so as in 0012 the schema text is edited (SQLite
-- lang_altertable.html §7). The CREATE INDEX below bumps the schema version, so every
-- connection re-reads the schema; the store runs migrations on a connection of their own that
-- is closed afterwards.
PRAGMA writable_schema = ON;
UPDATE sqlite_master
   SET sql = replace(replace(sql, 'lat         REAL NOT NULL,', 'lat         REAL,'),
                     'lon         REAL NOT NULL,', 'lon         REAL,')
 WHERE type = 'table' AND name = 'reports';
PRAGMA writable_schema = OFF;

-- The reports waiting for the desk to place them.
CREATE INDEX reports_unlocated ON reports (created_at) WHERE lat IS NULL;
